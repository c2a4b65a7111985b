"""Services: one per function. Each takes a parsed event and a Context, and acts through the store
and providers. Decisions are delegated to the pure modules (policy, reaper, model)."""
