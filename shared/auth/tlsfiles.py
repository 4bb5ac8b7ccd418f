"""`conclave auth init --tls`: a private CA and a server certificate for every hub and leaf server.

Clients verify the server against the CA; identities stay nkeys (no client certificates), so TLS
here is encryption plus server authentication. Keys are written owner-only.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

import msgspec
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALID_DAYS = 3650


class TlsFiles(msgspec.Struct, frozen=True):
    ca: str
    cert: str
    key: str


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _certificate(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    signer: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    hosts: list[str],
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName(_sans(hosts)), critical=False)
    return builder.sign(signer, hashes.SHA256())


def _sans(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def make_tls(directory: Path, hosts: list[str]) -> TlsFiles:
    """ca.pem, server.pem and server-key.pem in `directory`; the server certificate names
    `hosts` (DNS names or IP addresses the servers are reached by)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("Conclave CA")
    ca_cert = _certificate(ca_name, ca_name, ca_key.public_key(), ca_key, ca=True, hosts=[])
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(
        _name("conclave-server"), ca_name, key.public_key(), ca_key, ca=False, hosts=hosts
    )
    files = TlsFiles(
        ca=str(directory / "ca.pem"),
        cert=str(directory / "server.pem"),
        key=str(directory / "server-key.pem"),
    )
    Path(files.ca).write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    Path(files.cert).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(Path(files.key), key)
    return files


def server_block(files: TlsFiles, *, verify_peer: bool = False) -> str:
    """A `tls { ... }` block for a client, route or leaf listener."""
    verify = "\n    verify: true" if verify_peer else ""
    return (
        f'tls {{\n    cert_file: "{files.cert}"\n    key_file: "{files.key}"\n'
        f'    ca_file: "{files.ca}"{verify}\n  }}'
    )
