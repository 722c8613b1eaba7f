"""Sealing a bus credential to one box: only the holder of the box's X25519 private key can read it.

Used by the cloud (a new box's broker password at its claim, a rotated one later), by the box's
setup mode and by its agent. Version 1: an ephemeral X25519 key pair; HKDF-SHA256 over the shared
secret with info = SEAL_INFO + ephemeral public key + box public key; ChaCha20-Poly1305 with a zero
nonce (each key is used once) and SEAL_INFO as associated data. Wire form: base64(ephemeral public
key (32 bytes) + ciphertext).
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["SEAL_INFO", "SealError", "load_or_create_key", "open_sealed", "parse_public_key", "public_key_of", "seal"]

SEAL_INFO = b"omnishelf-seal-v1"


class SealError(ValueError):
    """A key or sealed secret that cannot be used (one line saying why)."""


def parse_public_key(value: str) -> bytes:
    """The 32 raw bytes of a base64 X25519 public key."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SealError(f"{value[:60]!r} is not base64: expected the box's X25519 public key") from None
    if len(raw) != 32:
        raise SealError(f"the public key has {len(raw)} bytes: expected 32 (X25519)")
    return raw


def public_key_of(key: X25519PrivateKey) -> str:
    return base64.b64encode(key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()


def _key(shared: bytes, eph_pub: bytes, box_pub: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=SEAL_INFO + eph_pub + box_pub).derive(shared)


def seal(box_public_key: str, secret: bytes) -> str:
    box_pub = parse_public_key(box_public_key)
    eph = X25519PrivateKey.generate()
    eph_pub = base64.b64decode(public_key_of(eph))
    shared = eph.exchange(X25519PublicKey.from_public_bytes(box_pub))
    return base64.b64encode(eph_pub + ChaCha20Poly1305(_key(shared, eph_pub, box_pub)).encrypt(b"\0" * 12, secret, SEAL_INFO)).decode()


def open_sealed(key: X25519PrivateKey, sealed: str) -> bytes:
    try:
        blob = base64.b64decode(sealed, validate=True)
    except (binascii.Error, ValueError):
        raise SealError("the sealed secret is not base64") from None
    if len(blob) < 32 + 16:
        raise SealError(f"the sealed secret has {len(blob)} bytes: expected at least 48")
    eph_pub, ct = blob[:32], blob[32:]
    box_pub = base64.b64decode(public_key_of(key))
    shared = key.exchange(X25519PublicKey.from_public_bytes(eph_pub))
    try:
        return ChaCha20Poly1305(_key(shared, eph_pub, box_pub)).decrypt(b"\0" * 12, ct, SEAL_INFO)
    except Exception:
        raise SealError("the secret was not sealed to this box's key (or was damaged)") from None


def load_or_create_key(path: Path, *, create: bool = True) -> X25519PrivateKey:
    """The box's private key from `path` (raw 32 bytes, mode 0600), made there first if `create`."""
    try:
        return X25519PrivateKey.from_private_bytes(path.read_bytes())
    except FileNotFoundError:
        if not create:
            raise SealError(f"no box key at {path}: this box was not claimed with `omnishelf provision`") from None
    except ValueError:
        raise SealError(f"{path} is not a box key (expected 32 raw bytes)") from None
    key = X25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()))
    tmp.replace(path)
    return key
