"""The box's key pair, the sealed password it receives, and the pairing-code-keyed session.

The seal is `cloud.fleet.identity.seal` (version 1; the format is described there): X25519 to the
box's key, HKDF-SHA256, ChaCha20-Poly1305.

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
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "PAIR_INFO",
    "SEAL_INFO",
    "BoxKey",
    "SealError",
    "finish_mac",
    "new_pairing_code",
    "pair_key",
    "proof",
    "public_b64",
]

SEAL_INFO = b"omnishelf-seal-v1"
PAIR_INFO = b"omnishelf-pair-v1"


class SealError(ValueError):
    """A sealed secret this box cannot open (not for its key, or damaged)."""


def public_b64(key: X25519PrivateKey) -> str:
    return base64.b64encode(key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()


class BoxKey:
    """The box's X25519 key pair, made on the box and kept in a 0600 file until it is claimed."""

    def __init__(self, key: X25519PrivateKey) -> None:
        self.key = key

    @classmethod
    def load_or_create(cls, path: Path) -> BoxKey:
        try:
            raw = path.read_bytes()
            return cls(X25519PrivateKey.from_private_bytes(raw))
        except (FileNotFoundError, ValueError):
            pass
        key = X25519PrivateKey.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()))
        tmp.replace(path)
        return cls(key)

    @property
    def public(self) -> str:
        return public_b64(self.key)

    def open(self, sealed: str) -> bytes:
        try:
            blob = base64.b64decode(sealed, validate=True)
        except ValueError:
            raise SealError("the sealed password is not base64") from None
        if len(blob) < 32 + 16:
            raise SealError(f"the sealed password has {len(blob)} bytes: expected at least 48")
        eph_pub, ct = blob[:32], blob[32:]
        box_pub = base64.b64decode(self.public)
        shared = self.key.exchange(X25519PublicKey.from_public_bytes(eph_pub))
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=SEAL_INFO + eph_pub + box_pub).derive(shared)
        try:
            return ChaCha20Poly1305(key).decrypt(b"\0" * 12, ct, SEAL_INFO)
        except Exception:
            raise SealError("the sealed password was not sealed to this box's key (or was damaged)") from None

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
