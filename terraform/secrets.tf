# Secret Manager holds the two secrets; Terraform creates the containers only. Their values are
# added out of band (docs/deploy.md), so they never enter a variable, the plan, the state or a label.

resource "google_secret_manager_secret" "secret" {
  for_each = toset(["vast-api-key", "heartbeat-signing-key"])

  secret_id = "spotleash-${each.value}"
  labels    = local.labels

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret_iam_member" "signing_key_reader" {
  for_each = local.functions

  secret_id = google_secret_manager_secret.secret["heartbeat-signing-key"].id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.function[each.key].email}"
}

resource "google_secret_manager_secret_iam_member" "vast_key_reader" {
  for_each = local.vast_key_readers

  secret_id = google_secret_manager_secret.secret["vast-api-key"].id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.function[each.key].email}"
}
