"""Tables of cloud.catalogue."""

from __future__ import annotations
