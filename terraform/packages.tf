# The package bucket: what `spotleash publish` uploads and every instance pulls.
#
#   packages/<sha256>.tar.gz   content-addressed app archives (the app, its wheels, spotleash's wheel)
#   latest-<channel>.txt       the pointer a launch resolves and pins into the instance's config
#   snapshots/<lease>/...      instances' state snapshots (snapshots.tf: on_heartbeat, that prefix only)
#
# Who may do what, and nothing more:
#   publishers (var.package_publishers)  object user on this bucket: upload archives, move pointers
#   sl-vm (the VMs' identity)            object viewer on this bucket only (the VM pulls its package)
#   launcher (on_demand)                 object viewer on this bucket only (resolves the pointer)
# A VAST box holds no Google identity: the launcher gives it a short-lived signed URL for the one
# archive it runs (V4 signing via its own service account, see `launcher_signs_urls`).

resource "google_storage_bucket" "packages" {
  name                        = "${var.project}-spotleash-pkg-${var.deployment_id}"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false
  labels                      = local.labels

  versioning {
    enabled = true
  }

  # Archives are content-addressed and never rewritten; an overwritten pointer leaves a noncurrent
  # version behind. Old noncurrent versions go; archives nobody has published for a while go too.
  lifecycle_rule {
    condition {
      num_newer_versions = 5
      with_state         = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      age            = var.package_retention_days
      matches_prefix = ["packages/"]
      with_state     = "LIVE"
    }
    action {
      type = "Delete"
    }
  }

  # Versioning keeps what retention deletes under snapshots/ as a noncurrent version: it goes a day later.
  lifecycle_rule {
    condition {
      matches_prefix             = ["snapshots/"]
      with_state                 = "ARCHIVED"
      days_since_noncurrent_time = 1
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.apis]
}

resource "google_storage_bucket_iam_member" "vm_package_reader" {
  bucket = google_storage_bucket.packages.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.vm.email}"
}

resource "google_storage_bucket_iam_member" "launcher_package_reader" {
  for_each = local.vm_creators

  bucket = google_storage_bucket.packages.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.function[each.key].email}"
}

resource "google_storage_bucket_iam_member" "package_publisher" {
  for_each = toset(var.package_publishers)

  bucket = google_storage_bucket.packages.name
  role   = "roles/storage.objectUser"
  member = each.value
}

# Signing a URL without a key file: the launcher signs with its own identity (iam.signBlob on itself).
resource "google_service_account_iam_member" "launcher_signs_urls" {
  for_each = var.enable_vast ? local.vm_creators : toset([])

  service_account_id = google_service_account.function[each.key].name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = "serviceAccount:${google_service_account.function[each.key].email}"
}
