# Identities and least privilege.
#
#   sl-<function>   one service account per function. Every function: Firestore user, publisher on
#                   the dead-letter topic only, reader of the heartbeat signing key only. The
#                   functions with a Compute role in the topology (on_demand: launcher; on_release:
#                   deleter; on_reap: deleter + lister; on_heartbeat: deleter, for an instance whose
#                   lease is gone or that cannot do its job) get custom roles with just those Compute
#                   permissions, and read the VAST API key. Only the launcher may act as the VM
#                   service account, and only that one; the reaper and the heartbeat publish a failover
#                   demand to the demand topic instead of launching (pubsub.tf).
#   sl-push         the identity Pub/Sub push deliveries carry (OIDC); may invoke the private functions.
#   sl-build        builds the function images: logs, its Artifact Registry repo, the source bucket.
#   sl-vm           the identity attached to spotleash VMs: may write logs and read the package
#                   bucket (packages.tf), nothing else. The launcher gives VMs the logging.write and
#                   devstorage.read_only scopes only, never cloud-platform.

resource "google_service_account" "function" {
  for_each = local.function_sa_ids

  account_id   = each.value
  display_name = "spotleash ${each.key}"
  description  = "Runs the ${each.key} function of spotleash (${var.deployment_id})."
}

resource "google_service_account" "push" {
  account_id   = "sl-push"
  display_name = "spotleash Pub/Sub push"
  description  = "OIDC identity of spotleash's push subscriptions; may only invoke the private functions."
}

resource "google_service_account" "build" {
  account_id   = "sl-build"
  display_name = "spotleash function builds"
  description  = "Cloud Build identity for spotleash's function images."
}

resource "google_service_account" "vm" {
  account_id   = "sl-vm"
  display_name = "spotleash VMs"
  description  = "Attached to spotleash Spot VMs; may write logs and read the package bucket."
}

# ---------------------------------------------------------------- project-level grants

resource "google_project_iam_member" "function_firestore" {
  for_each = local.functions

  project = var.project
  role    = "roles/datastore.user"
  member  = "serviceAccount:${google_service_account.function[each.key].email}"
}

resource "google_project_iam_member" "vm_logging" {
  project = var.project
  role    = "roles/logging.logWriter"
  member  = "serviceAccount:${google_service_account.vm.email}"
}

resource "google_project_iam_member" "build" {
  project = var.project
  role    = "roles/logging.logWriter"
  member  = "serviceAccount:${google_service_account.build.email}"
}

resource "google_artifact_registry_repository_iam_member" "build_writer" {
  location   = var.region
  repository = google_artifact_registry_repository.functions.name
  role       = "roles/artifactregistry.writer"
  member     = "serviceAccount:${google_service_account.build.email}"
}

resource "google_storage_bucket_iam_member" "build_source_reader" {
  bucket = google_storage_bucket.source.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.build.email}"
}

# ---------------------------------------------------------------- Compute Engine, custom roles

resource "google_project_iam_custom_role" "compute" {
  for_each = local.compute_permissions

  project     = var.project
  role_id     = "spotleash_${each.key}_${replace(var.deployment_id, "-", "_")}"
  title       = "spotleash VM ${each.key} (${var.deployment_id})"
  description = "The Compute Engine permissions spotleash's ${each.key} needs, and no more."
  permissions = each.value
}

resource "google_project_iam_member" "function_compute" {
  for_each = local.function_compute_roles

  project = var.project
  role    = google_project_iam_custom_role.compute[each.value.role].id
  member  = "serviceAccount:${google_service_account.function[each.value.function].email}"
}

# Attaching sl-vm to a VM needs actAs on sl-vm: granted on that one account, to the launcher only.
resource "google_service_account_iam_member" "launcher_acts_as_vm" {
  for_each = local.vm_creators

  service_account_id = google_service_account.vm.name
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${google_service_account.function[each.key].email}"
}
