"""Bus ingest: workers in a shared subscription store every box message once and keep node state."""

from cloud.ingest.stats import IngestStats
from cloud.ingest.worker import IngestWorker

__all__ = ["IngestStats", "IngestWorker"]
