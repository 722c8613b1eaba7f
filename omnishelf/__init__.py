"""The `omnishelf` command: one entry point over the packages (broker, cloud, edge, …)."""
