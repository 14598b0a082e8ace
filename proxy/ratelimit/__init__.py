"""Rate-limit internals: rule compilation, token estimates and reconciliation, client headers."""
