"""The signage engine's descriptor (see cloud.engine)."""

from __future__ import annotations

from cloud.engine import EngineSpec
from cloud.signage import models

ENGINE = EngineSpec(name="signage", models=(models,))
