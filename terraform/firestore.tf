# Firestore (native mode), the composite indexes of the queries the code runs, and TTL policies.

resource "google_firestore_database" "main" {
  name                              = "(default)" # the free tier applies to the (default) database only
  location_id                       = var.firestore_location
  type                              = "FIRESTORE_NATIVE"
  concurrency_mode                  = "PESSIMISTIC"
  app_engine_integration_mode       = "DISABLED"
  point_in_time_recovery_enablement = "POINT_IN_TIME_RECOVERY_DISABLED"
  delete_protection_state           = var.firestore_delete_protection ? "DELETE_PROTECTION_ENABLED" : "DELETE_PROTECTION_DISABLED"
  deletion_policy                   = "DELETE"

  depends_on = [google_project_service.apis]
}

# Composite indexes, derived from the queries in shared/spotleash/adapters/firestore.py (Store):
#
#   _live / live_instances     instances: deployment_id ==, state in [LIVE]
#   instances_of_lease         instances: lease_id ==, state in [LIVE]
#   live_instances_of_leases   instances: lease_id in [up to 30]  (the reap; automatic single-field index)
#   past_deadline              instances: deployment_id ==, state in [LIVE], deadline <=
#   heartbeat_older_than       instances: deployment_id ==, state in [RUNNING, READY], last_heartbeat <=
#   pending_older_than         instances: deployment_id ==, state in [...], updated_at <=
#   instances_since            instances: deployment_id ==, created_at >=
#   billed_since               instances: deployment_id ==, ended_at >=  (plus live and since queries)
#   expired_leases             leases:    deployment_id ==, expires_at <=   (and released == : equality
#                                         only, served by merging single-field indexes)
#   audit_entries              audit:     deployment_id == (, instance_id ==), newest first by at, limit
#
# A field written "name:desc" is indexed DESCENDING (a query ordering by it newest first needs that).
# Equality/in-only queries are served by Firestore's automatic single-field indexes; they get a
# composite index anyway where it is the hot path (every reap and every launch), so Firestore need
# not merge indexes there. If store.py gains a query, add its index here (a missing one fails at
# runtime with FAILED_PRECONDITION and a link that creates it).
locals {
  firestore_indexes = {
    instances-live          = { collection = "instances", fields = ["deployment_id", "state"] }
    instances-lease         = { collection = "instances", fields = ["lease_id", "state"] }
    instances-deadline      = { collection = "instances", fields = ["deployment_id", "state", "deadline"] }
    instances-heartbeat     = { collection = "instances", fields = ["deployment_id", "state", "last_heartbeat"] }
    instances-pending       = { collection = "instances", fields = ["deployment_id", "state", "updated_at"] }
    instances-created       = { collection = "instances", fields = ["deployment_id", "created_at"] }
    instances-ended         = { collection = "instances", fields = ["deployment_id", "ended_at"] }
    leases-expiry           = { collection = "leases", fields = ["deployment_id", "expires_at"] }
    audit-recent            = { collection = "audit", fields = ["deployment_id", "at:desc"] }
    audit-instance-timeline = { collection = "audit", fields = ["deployment_id", "instance_id", "at:desc"] }
  }

  # Records that expire on their own: TTL on `expire_at` (written by the store as now + RETENTION).
  # The same field entry turns off single-field indexing of expire_at: it is never queried, and a
  # monotonic indexed timestamp is a write hot spot.
  firestore_ttl_collections = ["audit", "events", "rejected"]
}

resource "google_firestore_index" "index" {
  for_each = local.firestore_indexes

  database    = google_firestore_database.main.name
  collection  = each.value.collection
  query_scope = "COLLECTION"

  dynamic "fields" {
    for_each = each.value.fields
    content {
      field_path = split(":", fields.value)[0]
      order      = endswith(fields.value, ":desc") ? "DESCENDING" : "ASCENDING"
    }
  }
}

resource "google_firestore_field" "ttl" {
  for_each = toset(local.firestore_ttl_collections)

  database   = google_firestore_database.main.name
  collection = each.value
  field      = "expire_at"

  ttl_config {}

  index_config {}
}
