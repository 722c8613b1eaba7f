"""The box's key pair, the sealed password it receives, and the pairing-code-keyed session.

The seal is `broker.sealing` (X25519 to the box's key, HKDF-SHA256, ChaCha20-Poly1305).

Pairing: the laptop makes an ephemeral X25519 key; both ends derive
K = HKDF-SHA256(X25519(laptop, box), salt = the box's nonce, info = PAIR_INFO + pairing code), then
prove K to each other (HMAC-SHA256 of "laptop" / "box") and MAC the final message with it. Someone
who only listens on the LAN learns nothing that lets them test codes (they lack the X25519 secret);
the code's 6 digits are guessed online at most `MAX_TRIES` times per code. An active attacker in the
middle during the claim could still test codes offline (this is not a PAKE): docs/technician.md
says so.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from broker.sealing import SealError, load_or_create_key, open_sealed, public_key_of

__all__ = [
    "PAIR_INFO",
    "BoxKey",
    "SealError",
    "finish_mac",
    "new_pairing_code",
    "pair_key",
    "proof",
    "public_b64",
]

PAIR_INFO = b"omnishelf-pair-v1"
public_b64 = public_key_of


class BoxKey:
    """The box's X25519 key pair, made on the box and kept in a 0600 file (it opens the password
    sealed at the claim, and later rotated ones)."""

    def __init__(self, key: X25519PrivateKey) -> None:
        self.key = key

    @classmethod
    def load_or_create(cls, path: Path) -> BoxKey:
        return cls(load_or_create_key(path))

    @property
    def public(self) -> str:
        return public_key_of(self.key)

    def open(self, sealed: str) -> bytes:
        return open_sealed(self.key, sealed)

    def pair_key(self, laptop_public: str, nonce: str, code: str) -> bytes:
        return pair_key(self.key, laptop_public, nonce, code)


def pair_key(own: X25519PrivateKey, peer_public: str, nonce: str, code: str) -> bytes:
    try:
        peer = X25519PublicKey.from_public_bytes(base64.b64decode(peer_public, validate=True))
    except ValueError:
        raise SealError("the peer's key is not a base64 X25519 public key") from None
    shared = own.exchange(peer)
    digits = "".join(ch for ch in code if ch.isdigit())
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=bytes.fromhex(nonce), info=PAIR_INFO + digits.encode()).derive(shared)


def proof(key: bytes, who: str) -> str:
    return hmac.new(key, who.encode(), hashlib.sha256).hexdigest()


def finish_mac(key: bytes, config_yaml: str, sealed_password: str, ca_pem: str | None) -> str:
    body = hashlib.sha256(b"\0".join([config_yaml.encode(), sealed_password.encode(), (ca_pem or "").encode()])).digest()
    return hmac.new(key, b"finish" + body, hashlib.sha256).hexdigest()


def new_pairing_code() -> str:
    """Six digits, shown as `123-456`."""
    n = f"{secrets.randbelow(1_000_000):06d}"
    return f"{n[:3]}-{n[3:]}"
