"""The omnishelf cloud core: database, ingest workers (bus → ledger, node state) and the REST API.

Depends on `broker/` (the bus contract); nothing of ours depends on it.
"""
