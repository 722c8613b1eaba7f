"""The technician's side: find boxes in setup mode, claim one for a store and role.

The claim, step by step (each refusal is one line naming what to do):
1. find the box by serial on the LAN (zeroconf) and read its public key and nonce;
2. confirm the pairing code the box shows (proofs both ways; the box allows MAX_TRIES guesses);
3. ask the cloud to enrol it with the enrolment token (the cloud checks the token's store, role,
   expiry, revocation and single use, registers the node, grants its topics on the broker, and
   answers with the first config and the password sealed to the box's key);
4. hand that to the box (MAC'd with the pairing key); the box leaves setup mode and connects;
5. wait until the cloud sees the box online.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from provisioning import crypto, lan

__all__ = ["ClaimError", "Claimed", "SetupBoxInfo", "claim", "discover"]


class ClaimError(RuntimeError):
    """A claim that did not happen (or did not finish); the message says which step and why."""


@dataclass(frozen=True, slots=True)
class SetupBoxInfo:
    serial: str
    model: str
    address: str
    port: int
    age_s: float
    """How long the box has been in setup mode."""


@dataclass(frozen=True, slots=True)
class Claimed:
    node_id: str
    store: str
    role: str
    profile: str
    online: bool
    seconds: float


def discover(interface: str | None, timeout: float = 1.5, want: str | None = None) -> list[SetupBoxInfo]:
    now = time.time()
    boxes = []
    for f in lan.browse([lan.SETUP_TYPE], interface=interface, timeout=timeout, want=want):
        try:
            since = float(f.prop("since", "0"))
        except ValueError:
            since = now
        boxes.append(SetupBoxInfo(f.prop("serial", "?"), f.prop("model", "?"), f.address, f.port, max(0.0, now - since)))
    return sorted(boxes, key=lambda b: b.serial)


def _http(method: str, url: str, body: dict[str, Any] | None = None, timeout: float = 15.0,
          headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            answer = json.loads(exc.read() or b"{}")
        except ValueError:
            answer = {}
        return exc.code, answer if isinstance(answer, dict) else {}
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ClaimError(f"cannot reach {url}: {reason}") from None


def _why(answer: dict[str, Any]) -> str:
    detail = answer.get("detail") or answer.get("error")
    if isinstance(detail, list) and detail:  # FastAPI's 422 list
        first = detail[0]
        return f"{'.'.join(str(x) for x in first.get('loc', [])[1:])}: {first.get('msg')}"
    return str(detail or answer or "no reason given")


def claim(
    serial: str, *, store: str, role: str, token: str, code: str, cloud_url: str, interface: str | None,
    discover_timeout: float = 5.0, wait_online_s: float = 60.0,
) -> Claimed:
    started = time.monotonic()
    found = [b for b in discover(interface, discover_timeout, want=serial) if b.serial == serial]
    if not found:
        raise ClaimError(
            f"no box with serial {serial} in setup mode on this LAN (looked {discover_timeout:.0f} s): "
            "check it is powered, on the same network, and shows a pairing code"
        )
    box = f"http://{found[0].address}:{found[0].port}"
    status, info = _http("GET", f"{box}/setup")
    if status != 200 or info.get("serial") != serial or not isinstance(info.get("public_key"), str):
        raise ClaimError(f"the box at {box} did not answer as box {serial} in setup mode ({status})")
    if info.get("claimed"):
        raise ClaimError(f"box {serial} is already claimed")

    laptop = X25519PrivateKey.generate()
    key = crypto.pair_key(laptop, info["public_key"], str(info["nonce"]), code)
    status, answer = _http("POST", f"{box}/setup/pair", {"laptop_key": crypto.public_b64(laptop), "proof": crypto.proof(key, "laptop")})
    if status != 200:
        raise ClaimError(f"box {serial} refused the pairing code: {_why(answer)}")
    if answer.get("box_proof") != crypto.proof(key, "box"):
        raise ClaimError(f"the device answering as box {serial} could not prove it shows that pairing code: not claimed")

    status, answer = _http("POST", f"{cloud_url.rstrip('/')}/provision/claim", {
        "token": token, "serial": serial, "model": info.get("model", "?"), "store": store, "role": role,
        "public_key": info["public_key"],
    })
    if status != 200:
        raise ClaimError(f"the cloud refused the claim: {_why(answer)}")
    node_id = str(answer["node_id"])
    finish = {k: answer.get(k) for k in ("config_yaml", "sealed_password", "ca_pem")}
    finish["mac"] = crypto.finish_mac(key, answer["config_yaml"], answer["sealed_password"], answer.get("ca_pem"))
    status, done = _http("POST", f"{box}/setup/finish", finish)
    if status != 200:
        raise ClaimError(
            f"the cloud enrolled {node_id} but box {serial} did not take its config: {_why(done)} "
            f"(retire {node_id} and claim again with a new token)"
        )
    online = False
    deadline = time.monotonic() + wait_online_s
    while wait_online_s > 0 and time.monotonic() < deadline:
        status, state = _http("POST", f"{cloud_url.rstrip('/')}/provision/status", {"token": token})
        if status == 200 and state.get("online"):
            online = True
            break
        time.sleep(0.2)
    return Claimed(node_id, str(answer["store"]), str(answer["role"]), str(answer["profile"]), online,
                   time.monotonic() - started)
