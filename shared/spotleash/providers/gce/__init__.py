"""Google Compute Engine Spot VMs: the provider and the startup script of its VMs."""
