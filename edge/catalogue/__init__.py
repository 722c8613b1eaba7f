"""The box's copy of the product catalogue: local store and search, sync from the cloud, API routes."""

from edge.catalogue.store import CatalogueStore, CorruptSyncFile
from edge.catalogue.sync import CatalogueSync

__all__ = ["CatalogueStore", "CatalogueSync", "CorruptSyncFile"]
