# Topics and subscriptions, all from shared/spotleash/topology.json.

resource "google_pubsub_topic" "topic" {
  for_each = local.topics

  name                       = each.value
  labels                     = local.labels
  message_retention_duration = "86400s" # a day: enough to replay after an outage, small when idle

  depends_on = [google_project_service.apis]
}

# Our own push subscription per Pub/Sub-triggered function: OIDC-authenticated push to the
# function's URL, retry with exponential backoff, dead-lettering after max_delivery_attempts.
resource "google_pubsub_subscription" "push" {
  for_each = local.push_subscriptions

  name                       = each.key
  topic                      = google_pubsub_topic.topic[each.value.topic].id
  labels                     = local.labels
  ack_deadline_seconds       = each.value.ack_deadline_s
  message_retention_duration = "86400s"
  enable_message_ordering    = false

  push_config {
    # The run.app URI (Cloud Run checks the OIDC audience against it). functions-framework reads
    # the topic from the path when it builds the CloudEvent.
    push_endpoint = "${google_cloudfunctions2_function.fn[each.value.function].service_config[0].uri}/projects/${var.project}/topics/${each.value.topic}"

    oidc_token {
      service_account_email = google_service_account.push.email
      audience              = google_cloudfunctions2_function.fn[each.value.function].service_config[0].uri
    }
  }

  retry_policy {
    minimum_backoff = "${each.value.min_backoff_s}s"
    maximum_backoff = "${each.value.max_backoff_s}s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.topic[local.topology.dead_letter_topic].id
    max_delivery_attempts = each.value.max_delivery_attempts
  }

  expiration_policy {
    ttl = "" # never expire for inactivity: an idle week must not delete the wiring
  }
}

# Pull subscriptions that only hold messages (the dead-letter store): read by
# `spotleash dead-letters` and by an operator. Without a subscription, dead letters would be lost.
resource "google_pubsub_subscription" "hold" {
  for_each = local.hold_subscriptions

  name                       = each.key
  topic                      = google_pubsub_topic.topic[each.value.topic].id
  labels                     = local.labels
  ack_deadline_seconds       = each.value.ack_deadline_s
  message_retention_duration = "604800s" # the Pub/Sub maximum for a subscription: 7 days
  retain_acked_messages      = false

  expiration_policy {
    ttl = ""
  }
}

# Dead-lettering is done by the Pub/Sub service agent: it must publish to the dead-letter topic and
# be a subscriber on each source subscription (to ack what it forwarded).
locals {
  pubsub_service_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
}

resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  topic  = google_pubsub_topic.topic[local.topology.dead_letter_topic].id
  role   = "roles/pubsub.publisher"
  member = local.pubsub_service_agent
}

resource "google_pubsub_subscription_iam_member" "dead_letter_subscriber" {
  for_each = local.push_subscriptions

  subscription = google_pubsub_subscription.push[each.key].id
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}

# The Pub/Sub service agent mints the OIDC tokens of push deliveries as the push service account.
resource "google_service_account_iam_member" "push_token_creator" {
  service_account_id = google_service_account.push.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_service_agent
}

# Functions copy a rejected (bad input) message to the dead-letter topic themselves
# (spotleash.services.entry.dead_letter): each function may publish there, and only there.
resource "google_pubsub_topic_iam_member" "function_dead_letter_publisher" {
  for_each = local.functions

  topic  = google_pubsub_topic.topic[local.topology.dead_letter_topic].id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${google_service_account.function[each.key].email}"
}

# Cloud Billing publishes budget notifications as this Google-owned account.
resource "google_pubsub_topic_iam_member" "budget_publisher" {
  topic  = google_pubsub_topic.topic[local.budget_topic].id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:billing-budget-alert@system.gserviceaccount.com"
}

# A lost instance's replacement is launched by on_demand alone (the one launcher): the reaper and the
# heartbeat publish a failover demand instead, each on the demand topic only (topology "publishes").
resource "google_pubsub_topic_iam_member" "function_publisher" {
  for_each = local.function_publishes

  topic  = google_pubsub_topic.topic[each.value.topic].id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${google_service_account.function[each.value.function].email}"
}

# The local agent's identity (var.agent_principals; a project Owner running it needs none of this) may
# publish on the agent's topics and no other: demand, lease, release, and reap, where its router asks for
# an immediate check of an instance that stopped answering without notice (an outbid VAST box).
resource "google_pubsub_topic_iam_member" "agent_publisher" {
  for_each = {
    for pair in setproduct(local.agent_topics, var.agent_principals) :
    "${pair[0]}/${pair[1]}" => { topic = pair[0], member = pair[1] }
  }

  topic  = google_pubsub_topic.topic[each.value.topic].id
  role   = "roles/pubsub.publisher"
  member = each.value.member # named principals only (the variable's validation refuses allUsers)
}
