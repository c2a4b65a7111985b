# One gen2 Cloud Function per entry point of functions/main.py, all from the same source archive.
#
# Pub/Sub-triggered functions have NO event_trigger: an Eventarc trigger would create its own push
# subscription, which cannot take a dead-letter policy. Instead each is a private HTTP service
# (ingress internal-only, no public invoker) that our own push subscription (pubsub.tf) calls with
# an OIDC token; functions-framework turns the push body into the messagePublished CloudEvent the
# @cloud_event entry points expect (the decorator, not the trigger, sets the signature type).
#
# on_heartbeat is the exception: VAST.ai boxes run outside Google Cloud and cannot hold a Google
# identity, so it is public (allUsers invoker, ingress all). It trusts nothing but the per-instance
# bearer token: HMAC(signing key, instance id), compared in constant time with the sha256 stored in
# Firestore; an unknown or wrong token gets 401/403 and changes nothing.
#
# on_dashboard (read-only web page) takes traffic from the internet too, but is never public: Cloud Run
# admits only the principals in var.dashboard_viewers (an identity token on each request, e.g. through
# `gcloud run services proxy`); with the default empty list nobody can open it.

resource "google_artifact_registry_repository" "functions" {
  location      = var.region
  repository_id = "spotleash-${replace(var.deployment_id, "_", "-")}"
  description   = "Function images of spotleash (${var.deployment_id}); old images are cleaned up."
  format        = "DOCKER"
  labels        = local.labels

  cleanup_policy_dry_run = false
  cleanup_policies {
    id     = "keep-recent"
    action = "KEEP"
    most_recent_versions {
      keep_count = 2
    }
  }
  cleanup_policies {
    id     = "delete-old"
    action = "DELETE"
    condition {
      older_than = "604800s"
    }
  }

  depends_on = [google_project_service.apis]
}

resource "google_cloudfunctions2_function" "fn" {
  for_each = local.functions

  name        = replace(each.key, "_", "-")
  location    = var.region
  description = "spotleash ${each.key} (${each.value.trigger})"
  labels      = local.labels

  build_config {
    runtime           = "python311"
    entry_point       = each.key
    service_account   = google_service_account.build.id
    docker_repository = google_artifact_registry_repository.functions.id

    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.source.name
      }
    }
  }

  service_config {
    available_memory                 = "${each.value.memory_mb}M"
    timeout_seconds                  = each.value.timeout_s
    min_instance_count               = 0
    max_instance_count               = var.function_max_instances
    max_instance_request_concurrency = 1
    ingress_settings                 = local.function_ingress[each.key]
    all_traffic_on_latest_revision   = true
    service_account_email            = google_service_account.function[each.key].email

    environment_variables = {
      SPOTLEASH_PROJECT             = var.project
      SPOTLEASH_DEPLOYMENT_ID       = var.deployment_id
      SPOTLEASH_REGION              = var.region
      SPOTLEASH_ZONES               = jsonencode(var.zones)
      SPOTLEASH_MACHINE_TYPE        = var.machine_type
      SPOTLEASH_MAX_RUNTIME_S       = tostring(var.max_runtime_s)
      SPOTLEASH_MONTHLY_BUDGET_USD  = tostring(var.monthly_budget_usd)
      SPOTLEASH_MAX_INSTANCES_TOTAL = tostring(var.max_instances_total)
      SPOTLEASH_BUDGET_STOP_ALL     = tostring(var.budget_stop_all)
      SPOTLEASH_REAP_DRY_RUN        = tostring(var.reap_dry_run)
      SPOTLEASH_HEARTBEAT_URL       = local.heartbeat_url
      # Read by the GCE provider when it attaches an identity to a VM (see iam.tf).
      SPOTLEASH_VM_SERVICE_ACCOUNT = google_service_account.vm.email
      # Where launches resolve the app package (packages.tf) and which pointer they pin.
      SPOTLEASH_PACKAGE_BUCKET  = google_storage_bucket.packages.name
      SPOTLEASH_PACKAGE_CHANNEL = var.package_channel
      LOG_EXECUTION_ID          = "true"
    }

    # Values live in Secret Manager only; the function reads the latest enabled version at start.
    secret_environment_variables {
      key        = "SPOTLEASH_HEARTBEAT_SIGNING_KEY"
      project_id = var.project
      secret     = google_secret_manager_secret.secret["heartbeat-signing-key"].secret_id
      version    = "latest"
    }

    dynamic "secret_environment_variables" {
      for_each = contains(local.vast_key_readers, each.key) ? ["vast-api-key"] : []
      content {
        key        = "SPOTLEASH_VAST_API_KEY"
        project_id = var.project
        secret     = google_secret_manager_secret.secret[secret_environment_variables.value].secret_id
        version    = "latest"
      }
    }
  }

  depends_on = [
    google_project_service.apis,
    google_secret_manager_secret_iam_member.signing_key_reader,
    google_secret_manager_secret_iam_member.vast_key_reader,
    google_project_iam_member.build,
  ]
}

# Invokers. The Cloud Run service under each gen2 function is what checks the caller.
resource "google_cloud_run_v2_service_iam_member" "push_invoker" {
  for_each = local.pubsub_functions

  project  = var.project
  location = var.region
  name     = google_cloudfunctions2_function.fn[each.key].service_config[0].service
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.push.email}"
}

resource "google_cloud_run_v2_service_iam_member" "public_invoker" {
  for_each = local.public_functions

  project  = var.project
  location = var.region
  name     = google_cloudfunctions2_function.fn[each.key].service_config[0].service
  role     = "roles/run.invoker"
  member   = "allUsers" # on_heartbeat only: VAST boxes outside Google Cloud; the bearer token is the check
}

resource "google_cloud_run_v2_service_iam_member" "dashboard_viewer" {
  for_each = {
    for pair in setproduct(local.dashboard_functions, var.dashboard_viewers) :
    "${pair[0]}/${pair[1]}" => { function = pair[0], member = pair[1] }
  }

  project  = var.project
  location = var.region
  name     = google_cloudfunctions2_function.fn[each.value.function].service_config[0].service
  role     = "roles/run.invoker"
  member   = each.value.member # named principals only (the variable's validation refuses allUsers)
}
