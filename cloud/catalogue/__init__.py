"""cloud.catalogue (see its models module)."""
