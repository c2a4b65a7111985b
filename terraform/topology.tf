# Everything topology-shaped comes from shared/spotleash/topology.json, the one truth the local stack
# reads too. This file holds only locals derived from it (no variables, no resources), so
# tests/unit/test_terraform.py can evaluate it with `terraform console` offline and compare every
# for_each with the topology.

locals {
  topology = jsondecode(file("${path.module}/../shared/spotleash/topology.json"))

  # Functions: pubsub-triggered ones are deployed as HTTP services (no Eventarc trigger) that our own
  # push subscription invokes with an OIDC token; the Eventarc auto-subscription could not carry a
  # dead-letter policy (docs/platform-facts). on_heartbeat is the one HTTP function on the internet.
  functions        = local.topology.functions
  pubsub_functions = { for name, f in local.functions : name => f if f.trigger == "pubsub" }
  public_functions = toset([for name, f in local.functions : name if try(f.public, false)])

  push_subscriptions = { for name, s in local.topology.subscriptions : name => s if s.function != null }
  hold_subscriptions = { for name, s in local.topology.subscriptions : name => s if s.function == null }

  schedules = local.topology.schedules
  topics    = toset(local.topology.topics)

  # Service account ids: 6-30 characters. "sl-" + the function name with '_' -> '-'.
  function_sa_ids = { for name in keys(local.functions) : name => "sl-${replace(name, "_", "-")}" }

  # Topology role -> Compute Engine permissions (custom roles in iam.tf; nothing broader is granted).
  compute_permissions = {
    launcher = [
      "compute.instances.create",
      "compute.instances.delete", # a partial create is deleted at once, it must not outlive its record
      "compute.instances.get",
      "compute.instances.list",
      "compute.instances.setLabels",
      "compute.instances.setMetadata",
      "compute.instances.setScheduling",
      "compute.instances.setServiceAccount", # needed to attach the VM service account at create
      "compute.zoneOperations.get",
      "compute.disks.create",
      "compute.subnetworks.use",
      "compute.subnetworks.useExternalIp", # VMs reach the heartbeat URL without a Cloud NAT gateway
    ]
    deleter = [
      "compute.instances.delete",
      "compute.instances.get",
      "compute.instances.list",
      "compute.zoneOperations.get",
    ]
    lister = [
      "compute.instances.get",
      "compute.instances.list",
    ]
  }
  function_compute_roles = merge([
    for fname, f in local.functions : { for r in f.roles : "${fname}/${r}" => { function = fname, role = r } }
  ]...)
  function_publishes = merge([
    for fname, f in local.functions : { for t in try(f.publishes, []) : "${fname}/${t}" => { function = fname, topic = t } }
  ]...)
  vm_creators  = toset([for fname, f in local.functions : fname if contains(f.roles, "launcher")])
  vm_functions = toset([for fname, f in local.functions : fname if length(f.roles) > 0])

  budget_topic       = local.functions["on_budget"].topic
  heartbeat_function = one([for name, f in local.functions : name if f.trigger == "http" && try(f.public, false)])

  # What the local agent publishes: demands, lease renewals, releases, and a reap tick naming an instance
  # its router lost without notice (spotleash.agent.loss). pubsub.tf grants the agent_principals these only.
  agent_topics = toset([for f in ["on_demand", "on_lease", "on_release", "on_reap"] : local.functions[f].topic])

  # HTTP functions that are not public (on_dashboard): reachable from the internet ("ingress": "all") so a
  # viewer's browser or `gcloud run services proxy` gets there, but Cloud Run lets in only the principals
  # named in the dashboard_viewers variable (functions.tf), each with a Google identity token.
  dashboard_functions = toset([for name, f in local.functions : name if f.trigger == "http" && !try(f.public, false)])
  function_ingress = { for name, f in local.functions : name =>
    try(f.public, false) || try(f.ingress, "internal") == "all" ? "ALLOW_ALL" : "ALLOW_INTERNAL_ONLY"
  }
}
