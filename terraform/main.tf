# spotleash on Google Cloud. The topology (topics, subscriptions, functions, schedules) is not
# written here: it is read from shared/spotleash/topology.json, the one file the local stack reads
# too, so the deployment and the local stack cannot drift. Every topology-shaped resource below is a
# for_each over local.topology.

locals {
  topology = jsondecode(file("${path.module}/../shared/spotleash/topology.json"))

  labels = merge(var.labels, {
    app        = "spotleash"
    deployment = var.deployment_id
    managed-by = "terraform"
  })

  # Functions: pubsub-triggered ones are deployed as HTTP services (no Eventarc trigger) that our own
  # push subscription invokes with an OIDC token; the Eventarc auto-subscription could not carry a
  # dead-letter policy (docs/platform-facts). on_heartbeat is the one HTTP function on the internet.
  functions        = local.topology.functions
  pubsub_functions = { for name, f in local.functions : name => f if f.trigger == "pubsub" }
  public_functions = toset([for name, f in local.functions : name if try(f.public, false)])

  push_subscriptions = { for name, s in local.topology.subscriptions : name => s if s.function != null }
  hold_subscriptions = { for name, s in local.topology.subscriptions : name => s if s.function == null }

  # Service account ids: 6-30 characters. "sl-" + the function name with '_' -> '-'.
  function_sa_ids = { for name in keys(local.functions) : name => "sl-${replace(name, "_", "-")}" }

  # Topology role -> Compute Engine permissions (custom roles below; nothing broader is granted).
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
  vm_creators = toset([for fname, f in local.functions : fname if contains(f.roles, "launcher")])

  # Secrets each function reads. Every function checks heartbeat tokens or issues them, and refuses
  # to start without the signing key (spotleash.services.entry.settings); only the functions that
  # talk to VAST get its API key.
  vast_key_readers = var.enable_vast ? toset([for fname, f in local.functions : fname if length(f.roles) > 0]) : toset([])

  budget_topic       = local.functions["on_budget"].topic
  heartbeat_function = one([for name, f in local.functions : name if f.trigger == "http"])
  # The cloudfunctions.net URL of a gen2 function is deterministic, so the functions can be told the
  # heartbeat URL without a dependency cycle on their own for_each.
  heartbeat_url = "https://${var.region}-${var.project}.cloudfunctions.net/${local.heartbeat_function}"

  source_archive = var.source_archive_path != "" ? var.source_archive_path : "${path.module}/build/spotleash-functions.zip"
}

data "google_project" "this" {
  project_id = var.project
}

resource "google_project_service" "apis" {
  for_each = toset([
    "artifactregistry.googleapis.com",
    "billingbudgets.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudfunctions.googleapis.com",
    "cloudscheduler.googleapis.com",
    "compute.googleapis.com",
    "firestore.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
  ])
  project            = var.project
  service            = each.value
  disable_on_destroy = false
}

# ---------------------------------------------------------------- function source

resource "google_storage_bucket" "source" {
  name                        = "${var.project}-spotleash-src-${var.deployment_id}"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = true
  labels                      = local.labels

  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      num_newer_versions = 3
      with_state         = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.apis]
}

resource "google_storage_bucket_object" "source" {
  # Named after the archive's sha256: the same sources give the same bytes and the same name, so the
  # functions are redeployed only when the code changed.
  name   = "spotleash-functions-${filesha256(local.source_archive)}.zip"
  bucket = google_storage_bucket.source.name
  source = local.source_archive
}
