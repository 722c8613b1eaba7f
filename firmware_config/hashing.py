"""A stable fingerprint of a box's effective configuration, secrets left out.

The box reports it in every birth and the cloud compares it with the config it assigned, so it
must not depend on key order, YAML formatting or where the password came from.
"""

from __future__ import annotations

import hashlib
import json

from firmware_config.models import NodeConfig

__all__ = ["config_hash"]

_SECRETS = {"broker": {"password", "password_file"}}


def config_hash(cfg: NodeConfig) -> str:
    """`sha256:<hex>` of the canonical JSON of the effective config (profile merged, secrets out)."""
    data = cfg.model_dump(mode="json", exclude=_SECRETS)
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
