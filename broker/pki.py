"""A deployment's own certificate authority for the broker's TLS listener (`omnishelf pki …`).

`omnishelf pki ca DIR` makes the CA once per deployment (`ca.pem` goes to every cloud host and
every box: `OMNISHELF_BROKER_CA_FILE`, `broker.ca_file`; `ca.key` stays offline); `omnishelf pki
cert DIR --name broker.example.com` signs the broker's certificate for the names (and addresses)
clients dial, for `omnishelf broker --tls-cert … --tls-key …`. ECDSA P-256, SHA-256: what
Mosquitto's OpenSSL and every client here accept, and small enough for a box. Nothing is
overwritten: a CA replaced by accident would strand every box that trusts the old one.

Boxes log in with their own password over this TLS (see docs/technician.md for why not client
certificates: Mosquitto can only revoke those through a CRL it reads at start).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
from pathlib import Path

__all__ = ["PkiError", "add_parser", "make_ca", "make_server_cert"]

CA_CERT, CA_KEY = "ca.pem", "ca.key"


class PkiError(ValueError):
    """A request that cannot be carried out; the message says what to change."""


def _write_new(path: Path, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise PkiError(f"{path} exists; nothing was overwritten (move it away first if you mean to replace it)") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def make_ca(folder: Path, common_name: str = "omnishelf deployment CA", days: int = 3650) -> tuple[Path, Path]:
    """A new CA in `folder` (`ca.pem`, and `ca.key` readable by its owner only); returns both paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    if not 1 <= days <= 36500:
        raise PkiError(f"--days {days}: expected 1 to 36500")
    folder.mkdir(parents=True, exist_ok=True)
    for file in (CA_CERT, CA_KEY):
        if (folder / file).exists():
            raise PkiError(f"{folder / file} exists; nothing was overwritten (a new CA strands every box that trusts the old one)")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_new(folder / CA_KEY, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()), 0o600)
    _write_new(folder / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return folder / CA_CERT, folder / CA_KEY


def make_server_cert(folder: Path, names: list[str], ips: list[str] | None = None, days: int = 825,
                     out: str | None = None) -> tuple[Path, Path]:
    """The broker's certificate and key, signed by the CA in `folder`, valid for `names` (DNS) and
    `ips`; written as `<out>.pem` / `<out>.key` (default: the first name) in `folder`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not names and not ips:
        raise PkiError("give at least one --name (or --ip) that clients will dial")
    if not 1 <= days <= 3650:
        raise PkiError(f"--days {days}: expected 1 to 3650")
    addresses = []
    for ip in ips or []:
        try:
            addresses.append(ipaddress.ip_address(ip))
        except ValueError:
            raise PkiError(f"--ip {ip!r} is not an IPv4 or IPv6 address") from None
    for n in names:
        if not n or any(c.isspace() for c in n) or "/" in n:
            raise PkiError(f"--name {n!r} is not a host name")
    try:
        ca_cert = x509.load_pem_x509_certificate((folder / CA_CERT).read_bytes())
        ca_key = serialization.load_pem_private_key((folder / CA_KEY).read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise PkiError(f"{exc.filename} is missing: make the CA first with 'omnishelf pki ca {folder}'") from None
    except ValueError as exc:
        raise PkiError(f"the CA in {folder} cannot be read: {exc}") from None
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{folder / CA_KEY} is not the EC key 'omnishelf pki ca' makes")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names] + [x509.IPAddress(a) for a in addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else str(addresses[0]))]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    stem = out or (names[0] if names else str(addresses[0]))
    key_path, cert_path = folder / f"{stem}.key", folder / f"{stem}.pem"
    if key_path.exists() or cert_path.exists():
        raise PkiError(f"{cert_path} or {key_path} exists; nothing was overwritten (choose another --out)")
    _write_new(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()), 0o600)
    _write_new(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path, key_path


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("pki", help="the deployment's CA and the broker's TLS certificate")
    cmds = p.add_subparsers(dest="pki_command", metavar="COMMAND")
    ca = cmds.add_parser("ca", help="make the deployment's CA (once): DIR/ca.pem for every host and box, DIR/ca.key offline")
    ca.add_argument("dir", type=Path)
    ca.add_argument("--name", default="omnishelf deployment CA", help="the CA's common name")
    ca.add_argument("--days", type=int, default=3650, help="validity (default: %(default)s)")
    ca.set_defaults(func=_cmd_ca)
    cert = cmds.add_parser("cert", help="sign the broker's certificate with the CA in DIR")
    cert.add_argument("dir", type=Path)
    cert.add_argument("--name", action="append", default=[], help="a DNS name clients dial (repeat for more)")
    cert.add_argument("--ip", action="append", default=[], help="an IP address clients dial (repeat for more)")
    cert.add_argument("--days", type=int, default=825, help="validity (default: %(default)s)")
    cert.add_argument("--out", help="file name stem (default: the first name)")
    cert.set_defaults(func=_cmd_cert)
    p.set_defaults(func=lambda _args: p.print_help() or 2)


def _cmd_ca(args: argparse.Namespace) -> int:
    try:
        cert, key = make_ca(args.dir, args.name, args.days)
    except PkiError as exc:
        raise SystemExit(str(exc)) from None
    print(f"CA {cert} (give it to every cloud host and box), key {key} (keep it offline, mode 0600)")
    return 0


def _cmd_cert(args: argparse.Namespace) -> int:
    try:
        cert, key = make_server_cert(args.dir, args.name, args.ip, args.days, args.out)
    except PkiError as exc:
        raise SystemExit(str(exc)) from None
    print(f"broker certificate {cert} and key {key}: omnishelf broker --tls-cert {cert} --tls-key {key}")
    return 0
