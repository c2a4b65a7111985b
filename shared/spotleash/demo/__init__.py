"""``spotleash demo``: the local stack, an example app, memory pressure and traffic, narrated."""
