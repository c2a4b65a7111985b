# spotleash on Google Cloud. The topology (topics, subscriptions, functions, schedules) is not
# written here: it is read from shared/spotleash/topology.json (topology.tf), the one file the local
# stack reads too, so the deployment and the local stack cannot drift. Every topology-shaped resource
# is a for_each over a local derived from local.topology.

locals {
  labels = merge(var.labels, {
    app        = "spotleash"
    deployment = var.deployment_id
    managed-by = "terraform"
  })

  # Secrets each function reads. Every function checks heartbeat tokens or issues them, and refuses
  # to start without the signing key (spotleash.services.entry.settings); only the functions that
  # talk to VAST get its API key.
  vast_key_readers = var.enable_vast ? local.vm_functions : toset([])

  # The cloudfunctions.net URL of a gen2 function is deterministic, so the functions can be told the
  # heartbeat URL without a dependency cycle on their own for_each.
  heartbeat_url = "https://${var.region}-${var.project}.cloudfunctions.net/${replace(local.heartbeat_function, "_", "-")}"

  source_archive = var.source_archive_path != "" ? var.source_archive_path : "${path.module}/build/spotleash-functions.zip"
}

data "google_project" "this" {
  project_id = var.project
}

resource "google_project_service" "apis" {
  for_each = toset([
    "artifactregistry.googleapis.com",
    "billingbudgets.googleapis.com",
    "cloudbilling.googleapis.com", # the Billing Catalog: Spot prices for the budget guard and the ledger
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
