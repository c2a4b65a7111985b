# A monthly billing budget on this project. Its amount is the last threshold; each threshold is an
# alert rule. Every notification goes to the budget topic, which on_budget consumes: past 100 % the
# control plane refuses launches and (budget_stop_all) the reaper deletes everything.

locals {
  budget_amount_usd = max(var.budget_thresholds_usd...)
}

resource "google_billing_budget" "spotleash" {
  billing_account = var.billing_account
  display_name    = "spotleash ${var.deployment_id}"

  budget_filter {
    projects               = ["projects/${data.google_project.this.number}"]
    calendar_period        = "MONTH"
    credit_types_treatment = "INCLUDE_ALL_CREDITS"
  }

  amount {
    specified_amount {
      currency_code = "USD"
      units         = tostring(floor(local.budget_amount_usd))
      nanos         = floor((local.budget_amount_usd - floor(local.budget_amount_usd)) * 1000000000)
    }
  }

  dynamic "threshold_rules" {
    for_each = var.budget_thresholds_usd
    content {
      threshold_percent = threshold_rules.value / local.budget_amount_usd
      spend_basis       = "CURRENT_SPEND"
    }
  }

  # Also warn when the month is forecast to cross the budget, before it does.
  threshold_rules {
    threshold_percent = 1.0
    spend_basis       = "FORECASTED_SPEND"
  }

  all_updates_rule {
    pubsub_topic                    = google_pubsub_topic.topic[local.budget_topic].id
    schema_version                  = "1.0"
    disable_default_iam_recipients  = false
    enable_project_level_recipients = true
  }

  depends_on = [google_project_service.apis, google_pubsub_topic_iam_member.budget_publisher]
}
