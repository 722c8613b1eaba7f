"""Tables of cloud.access."""

from __future__ import annotations
