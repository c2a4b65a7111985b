# Snapshots: snapshots/<lease>/<snapshot_id>/part-*.tar.zst and manifest.json in the package bucket
# (shared/spotleash/wire/snapshot.py). The instances never hold a credential for them: on_heartbeat
# answers their heartbeat's snapshot asks with V4 signed URLs, one object and one verb each, signed as
# its own service account through IAM signBlob. A signed URL acts with the signer's permissions, so
# what on_heartbeat may do here bounds what any URL may do:
#
#   create   an upload (the URL also carries x-goog-if-generation-match: 0: create only, never overwrite)
#   get      a restore's download; the manifest read and the size/MD5 check that verify a snapshot
#   delete   retention (keep the newest SPOTLEASH_SNAPSHOT_KEEP); it deletes the names it recorded, so
#            no list permission is needed
#
# and only on objects whose name starts with snapshots/ (IAM condition): never a package or a pointer.
# on_reap may delete there, nothing more: it sweeps the objects of an upload whose instance agent died
# (spotleash.services.reap.sweep_abandoned_uploads), by the names recorded.

locals {
  # The functions that answer snapshot asks: on_heartbeat alone (spotleash.services.snapshots).
  snapshot_signers = toset(["on_heartbeat"])
  snapshot_prefix  = "projects/_/buckets/${google_storage_bucket.packages.name}/objects/snapshots/"
}

resource "google_project_iam_custom_role" "snapshot_objects" {
  project     = var.project
  role_id     = "spotleash_snapshots_${replace(var.deployment_id, "-", "_")}"
  title       = "spotleash snapshot objects (${var.deployment_id})"
  description = "Create, read and delete snapshot objects; granted on the package bucket under snapshots/ only."
  permissions = ["storage.objects.create", "storage.objects.delete", "storage.objects.get"]
}

resource "google_storage_bucket_iam_member" "snapshot_objects" {
  for_each = local.snapshot_signers

  bucket = google_storage_bucket.packages.name
  role   = google_project_iam_custom_role.snapshot_objects.id
  member = "serviceAccount:${google_service_account.function[each.key].email}"

  condition {
    title       = "snapshots-prefix-only"
    description = "Objects under snapshots/ only: never a package archive or a channel pointer."
    expression  = "resource.name.startsWith(\"${local.snapshot_prefix}\")"
  }
}

resource "google_project_iam_custom_role" "snapshot_sweep" {
  project     = var.project
  role_id     = "spotleash_snapshot_sweep_${replace(var.deployment_id, "-", "_")}"
  title       = "spotleash snapshot sweep (${var.deployment_id})"
  description = "Delete snapshot objects of abandoned uploads; granted on the package bucket under snapshots/ only."
  permissions = ["storage.objects.delete"]
}

resource "google_storage_bucket_iam_member" "snapshot_sweep" {
  bucket = google_storage_bucket.packages.name
  role   = google_project_iam_custom_role.snapshot_sweep.id
  member = "serviceAccount:${google_service_account.function["on_reap"].email}"

  condition {
    title       = "snapshots-prefix-only"
    description = "Objects under snapshots/ only: never a package archive or a channel pointer."
    expression  = "resource.name.startsWith(\"${local.snapshot_prefix}\")"
  }
}

# Signing without a key file: signBlob as itself, on itself only.
resource "google_service_account_iam_member" "snapshot_signer_signs_urls" {
  for_each = local.snapshot_signers

  service_account_id = google_service_account.function[each.key].name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = "serviceAccount:${google_service_account.function[each.key].email}"
}
