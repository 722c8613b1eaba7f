"""cloud.access (see its models module)."""
