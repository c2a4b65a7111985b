"""A memory-limited "laptop" on this machine, for the whole-flow tests and benchmarks of the hand-off with real
memory: ``cgroups`` (a real memory cgroup, read from outside with no spotleash code) and ``ballast`` (an app whose
component really holds memory, a hog, the agent started inside the cgroup)."""
