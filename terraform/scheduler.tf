# The reaper's clock: Cloud Scheduler publishes each schedule's payload to its topic.
resource "google_cloud_scheduler_job" "schedule" {
  for_each = local.schedules

  name        = each.key
  description = "spotleash: publishes ${jsonencode(each.value.payload)} to ${each.value.topic}"
  region      = var.region
  schedule    = each.value.cron
  time_zone   = each.value.time_zone
  paused      = false

  pubsub_target {
    topic_name = google_pubsub_topic.topic[each.value.topic].id
    data       = base64encode(jsonencode(each.value.payload))
    attributes = {
      deployment = var.deployment_id
      source     = "scheduler"
    }
  }

  retry_config {
    retry_count          = 1
    min_backoff_duration = "5s"
    max_backoff_duration = "30s"
  }

  depends_on = [google_project_service.apis]
}
