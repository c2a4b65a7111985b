"""What runs on the VM / GPU box: heartbeats to on_heartbeat, the preemption watch, the backend."""
