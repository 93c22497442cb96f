"""A private certificate authority for TLS tests, made with the ``openssl`` command.

``make_pki(folder)`` writes a CA, a server certificate for ``localhost`` / ``127.0.0.1``, a
client certificate signed by the same CA, and a second, unrelated CA (for the "wrong CA"
cases). EC keys keep it well under a second.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Pki:
    """Paths of the files ``make_pki`` wrote."""

    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path
    stranger_key: Path


def openssl_available() -> bool:
    """True when the ``openssl`` command is installed."""
    return shutil.which("openssl") is not None


def _openssl(folder: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)


def _ca(folder: Path, name: str) -> None:
    _openssl(folder, "req", "-x509", *_KEY, "-keyout", f"{name}.key", "-out", f"{name}.pem",
             "-days", "2", "-subj", f"/CN=eventyard test {name}")


def _signed(folder: Path, name: str, ca: str, subject: str, extensions: str) -> None:
    _openssl(folder, "req", *_KEY, "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", subject)
    (folder / f"{name}.ext").write_text(extensions)
    _openssl(folder, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey",
             f"{ca}.key", "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
             "-extfile", f"{name}.ext")


def make_pki(folder: Path) -> Pki:
    """Write the CA, server and client files into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    _ca(folder, "ca")
    _ca(folder, "other-ca")
    _signed(folder, "server", "ca", "/CN=localhost",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _signed(folder, "client", "ca", "/CN=eventyard-client", "extendedKeyUsage=clientAuth\n")
    _signed(folder, "stranger", "other-ca", "/CN=stranger", "extendedKeyUsage=clientAuth\n")
    for key in folder.glob("*.key"):
        key.chmod(0o644)  # the broker runs as another user when started by root's service
    return Pki(ca=folder / "ca.pem", other_ca=folder / "other-ca.pem",
               server_cert=folder / "server.pem", server_key=folder / "server.key",
               client_cert=folder / "client.pem", client_key=folder / "client.key",
               stranger_cert=folder / "stranger.pem", stranger_key=folder / "stranger.key")
