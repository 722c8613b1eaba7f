"""A box's broker identity: its password sealed to the box's own key, and the broker's side of it.

Why a per-node password and not a client certificate (see docs/technician.md, "Why a password"):
Mosquitto 2.0's dynamic-security plugin changes, disables and deletes a password credential at run
time over `$CONTROL` - a disabled client is dropped within milliseconds and the flag is saved in the
plugin's file, so it holds across restarts. A client certificate could only be revoked through a
CRL file that Mosquitto reads when the listener starts (a restart for every revocation), and the
2.0 plugin does not authorise certificate identities. TLS (server authentication) still protects
the password on the wire; the password itself never exists outside the cloud and the box: the box
makes an X25519 key pair in setup mode and the cloud seals the password to its public key, so the
technician's laptop relays only ciphertext.

The seal is `broker.sealing` (one implementation for the cloud, the box and its setup mode).
"""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from broker import dynsec
from broker.client import BrokerAddress
from broker.sealing import SealError, seal
from cloud.settings import Settings

__all__ = ["BrokerAdmin", "BrokerAdminError", "SealError", "new_password", "parse_public_key", "seal"]

def parse_public_key(value: str) -> bytes:
    """The raw bytes of a box's base64 X25519 public key; ValueError naming what is wrong."""
    from broker.sealing import parse_public_key as parse

    return parse(value)


def new_password() -> str:
    return secrets.token_urlsafe(32)


class BrokerAdminError(RuntimeError):
    """The broker could not be reached as its admin, or refused a credential change (one line)."""


@dataclass(frozen=True, slots=True)
class BrokerAdmin:
    """The cloud acting as the broker's dynsec admin."""

    address: BrokerAddress
    password: str
    timeout: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings) -> BrokerAdmin:
        if not settings.BROKER_ADMIN_SECRET_FILE:
            raise BrokerAdminError(
                "OMNISHELF_BROKER_ADMIN_SECRET_FILE is not set: the cloud cannot grant or revoke box credentials "
                "(point it at the broker's dynsec-admin.secret)"
            )
        path = Path(settings.BROKER_ADMIN_SECRET_FILE)
        try:
            password = path.read_text().strip()
        except OSError as exc:
            raise BrokerAdminError(f"cannot read the broker admin secret {path}: {exc.strerror or exc}") from None
        url = settings.BROKER_ADMIN_URL or settings.BROKER_URL
        return cls(BrokerAddress.from_url(url, settings.BROKER_CA_FILE or None), password)

    def run(self, commands: list[dynsec.Command], *, tolerate: tuple[str, ...] = ()) -> None:
        """Send `commands`; raise naming the first one the broker refused (except refusals whose
        reason is in `tolerate`, e.g. "Group already exists")."""
        try:
            applied = dynsec.send(self.address, self.password, commands, self.timeout)
        except dynsec.DynsecError as exc:
            raise BrokerAdminError(str(exc)) from None
        refused = [(c, why) for c, why in applied.refused if why not in tolerate]
        if refused:
            cmd, why = refused[0]
            raise BrokerAdminError(f"the broker refused {dynsec.describe(cmd)}: {why}")

    def grant(self, node: str, password: str) -> None:
        self.run(dynsec.grant_commands(node, password), tolerate=("Group already exists",))

    def revoke(self, node: str) -> None:
        self.run(dynsec.revoke_commands(node))

    def reinstate(self, node: str) -> None:
        self.run([{"command": "enableClient", "username": node}])

    def retire(self, node: str) -> None:
        self.run(dynsec.retire_commands(node), tolerate=("Client not found", "Role not found"))

    def set_password(self, node: str, password: str) -> None:
        self.run([{"command": "setClientPassword", "username": node, "password": password}])

    # A rotated password waits in the database until the box has acknowledged it; only then does
    # the cloud set it on the broker, which takes it in clear. Kept wrapped under a key derived
    # from the admin secret, a database dump or backup alone does not yield a box's next login.

    def wrap_pending(self, node: str, password: str) -> str:
        nonce = secrets.token_bytes(12)
        sealed = AESGCM(self._pending_key()).encrypt(nonce, password.encode(), node.encode())
        return _PENDING_PREFIX + base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode()

    def unwrap_pending(self, node: str, wrapped: str) -> str:
        if not wrapped.startswith(_PENDING_PREFIX):
            raise BrokerAdminError(f"the pending password of {node!r} is not in a form this cloud knows; rotate again")
        body = wrapped.removeprefix(_PENDING_PREFIX)
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            return AESGCM(self._pending_key()).decrypt(raw[:12], raw[12:], node.encode()).decode()
        except (InvalidTag, ValueError, binascii.Error):
            raise BrokerAdminError(
                f"the pending password of {node!r} cannot be opened (the broker admin secret changed since the "
                "rotation?); rotate the credential again"
            ) from None

    def _pending_key(self) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"omnishelf pending broker password").derive(
            self.password.encode()
        )


_PENDING_PREFIX = "v1:"
