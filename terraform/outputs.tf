# What the local agent needs (docs/deploy.md shows how to turn these into SPOTLEASH_* variables).
# Nothing secret: secret *names* only, never values.

output "project" {
  description = "SPOTLEASH_PROJECT for the agent."
  value       = var.project
}

output "region" {
  description = "SPOTLEASH_REGION."
  value       = var.region
}

output "deployment_id" {
  description = "SPOTLEASH_DEPLOYMENT_ID."
  value       = var.deployment_id
}

output "topics" {
  description = "Topic names, by topology name."
  value       = { for name, t in google_pubsub_topic.topic : name => t.name }
}

output "heartbeat_url" {
  description = "SPOTLEASH_HEARTBEAT_URL: where instance agents report (public, token-checked)."
  value       = local.heartbeat_url
}

output "function_urls" {
  description = "run.app URL of each function (all private except on_heartbeat)."
  value       = { for name, f in google_cloudfunctions2_function.fn : name => f.service_config[0].uri }
}

output "dead_letter_subscription" {
  description = "Where rejected and undeliverable messages wait for an operator."
  value       = [for s in google_pubsub_subscription.hold : s.name]
}

output "secret_ids" {
  description = "Secret Manager secrets whose values you add out of band (docs/deploy.md)."
  value       = { for k, s in google_secret_manager_secret.secret : k => s.secret_id }
}

output "vm_service_account" {
  description = "The identity attached to spotleash VMs."
  value       = google_service_account.vm.email
}

output "agent_env" {
  description = "Environment for the local agent: eval \"$(terraform output -raw agent_env)\"."
  value = join("\n", [
    "export SPOTLEASH_PROJECT=${var.project}",
    "export SPOTLEASH_REGION=${var.region}",
    "export SPOTLEASH_DEPLOYMENT_ID=${var.deployment_id}",
    "export SPOTLEASH_ZONES='${jsonencode(var.zones)}'",
    "export SPOTLEASH_HEARTBEAT_URL=${local.heartbeat_url}",
  ])
}

output "package_bucket" {
  description = "SPOTLEASH_PACKAGE_BUCKET: where `spotleash publish` uploads the app package."
  value       = google_storage_bucket.packages.name
}

output "dashboard_url" {
  description = "The read-only dashboard (on_dashboard). Only var.dashboard_viewers may open it: `gcloud run services proxy` with the service name in this URL gives a browser a local address that adds your identity token."
  value       = google_cloudfunctions2_function.fn["on_dashboard"].service_config[0].uri
}
