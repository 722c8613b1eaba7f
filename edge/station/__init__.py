"""The scanning station: scanners → `scan` messages → verdicts (final from the cloud, provisional
from the box's cache while it is unreachable) on the local API; receipts and labels from a durable
print queue."""
