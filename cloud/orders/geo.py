"""Distances, the spatial index of locations, and delivery zones.

Distances are exact great-circle distances on a sphere of the Earth's mean radius (haversine).
Candidates come from a `cKDTree` over unit vectors: the chord between two unit vectors grows
monotonically with the great-circle angle, so the k nearest by chord are the k nearest by
distance, and no order scans every location.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# scipy and shapely are imported where they are first used: together they cost about 0.5 s of CPU
# to import, paid by every `omnishelf` cloud command and process that only loads the orders engine.

__all__ = ["EARTH_KM", "SpatialIndex", "Zone", "great_circle_km", "unit_vectors"]

EARTH_KM = 6371.0088
"""Mean Earth radius (IUGG)."""


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_KM * math.asin(min(1.0, math.sqrt(h)))


def unit_vectors(lat: Any, lon: Any) -> np.ndarray[Any, Any]:
    la, lo = np.radians(np.asarray(lat, dtype=float)), np.radians(np.asarray(lon, dtype=float))
    return np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], axis=-1)


class SpatialIndex:
    """The k nearest of a fixed set of points (ids with lat/lon)."""

    def __init__(self, ids: Sequence[int], lats: Sequence[float], lons: Sequence[float]) -> None:
        self.ids = np.asarray(ids, dtype=np.int64)
        self.size = len(ids)
        from scipy.spatial import cKDTree  # type: ignore[import-untyped]

        self._tree = cKDTree(unit_vectors(lats, lons)) if self.size else None

    def nearest(self, lat: float, lon: float, k: int) -> list[int]:
        """Ids of the `k` nearest points, nearest first."""
        if self._tree is None or k <= 0:
            return []
        return self.nearest_many([lat], [lon], k)[0]

    def nearest_many(self, lats: Sequence[float], lons: Sequence[float], k: int) -> list[list[int]]:
        """`nearest` of each point, in one query of the tree (a batch's orders: a call per order
        cost more in its setup than in the search)."""
        if self._tree is None or k <= 0:
            return [[] for _ in lats]
        k = min(k, self.size)
        _, idx = self._tree.query(unit_vectors(lats, lons), k=k)
        out: list[list[int]] = []
        for row in np.asarray(idx).reshape(len(lats), k):
            out.append(self.ids[row[row < self.size]].tolist())
        return out

    def within_km(self, lat: float, lon: float, km: float) -> list[int]:
        if self._tree is None:
            return []
        chord = 2 * math.sin(min(math.pi, km / EARTH_KM) / 2)
        return [int(self.ids[i]) for i in self._tree.query_ball_point(unit_vectors(lat, lon), chord)]


@dataclass(frozen=True)
class Zone:
    """A location's delivery zone: a radius around it, a polygon ([lon, lat] ring), or anywhere."""

    lat: float
    lon: float
    radius_km: float | None = None
    polygon: tuple[tuple[float, float], ...] | None = None

    def __post_init__(self) -> None:
        prepared = None
        if self.polygon:
            from shapely.geometry import Polygon  # type: ignore[import-untyped]
            from shapely.prepared import prep  # type: ignore[import-untyped]

            poly = Polygon(self.polygon)
            if not poly.is_valid:
                raise ValueError(f"delivery zone polygon is not a simple ring ({len(self.polygon)} points)")
            prepared = prep(poly)
        object.__setattr__(self, "_prepared", prepared)

    @property
    def anywhere(self) -> bool:
        return self.radius_km is None and not self.polygon

    def contains(self, lat: float, lon: float) -> bool:
        if self.anywhere:
            return True
        if self.radius_km is not None and great_circle_km(self.lat, self.lon, lat, lon) > self.radius_km:
            return False
        prepared = getattr(self, "_prepared", None)
        if prepared is None:
            return True
        from shapely.geometry import Point

        return bool(prepared.covers(Point(lon, lat)))
