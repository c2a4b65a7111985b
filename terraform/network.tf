# The one port of an instance that the user's machine reaches: the TLS front of the router
# (shared/spotleash/instance_agent/front.py). Every request through it is TLS, pinned by the
# certificate fingerprint the instance reports over its authenticated heartbeat, and carries the
# lease's credential, checked before anything reaches a component. Components listen on loopback
# only, so no rule here (or anywhere) opens a component port.
#
# Nothing is opened by default: list the addresses of the machines that run the agent (or
# 35.235.240.0/20 to come through IAP TCP forwarding) in var.router_source_ranges.

locals {
  front_tag = "spotleash-front" # network tag the launcher puts on every VM (spotleash.wire.agent_config.FRONT_TAG)
}

resource "google_compute_firewall" "front" {
  count = length(var.router_source_ranges) > 0 ? 1 : 0

  project     = var.project
  name        = "spotleash-${replace(var.deployment_id, "_", "-")}-front"
  network     = var.network
  description = "spotleash: the router's TLS front on instances of deployment ${var.deployment_id} (credential on every request)"
  direction   = "INGRESS"
  priority    = 1000

  allow {
    protocol = "tcp"
    ports    = [tostring(var.front_port)]
  }

  source_ranges = var.router_source_ranges
  target_tags   = [local.front_tag]
}
