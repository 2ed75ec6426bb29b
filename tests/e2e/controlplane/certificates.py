"""Certificates and keys for a loopback control plane, made with the openssl command line.

A CA; the apiserver's serving certificate (loopback and in-cluster names); an administrator's
client certificate in group system:masters (the harness and the controller-manager use it; the
operator never does); the service-account signing key pair.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

_SANS = "IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default.svc"


def make_pki(pki: Path) -> Path:
    """Create ``pki`` and fill it: ca.*, apiserver.*, admin.*, sa.key and sa.pub."""
    pki.mkdir(parents=True)
    _openssl(pki, "req -x509 -newkey rsa:2048 -nodes -days 2 -keyout ca.key -out ca.crt")
    sign(pki, "apiserver", "/CN=kube-apiserver", f"subjectAltName={_SANS}")
    sign(pki, "admin", "/O=system:masters/CN=earshot-admin", "extendedKeyUsage=clientAuth")
    _openssl(pki, "genrsa -out sa.key 2048")
    _openssl(pki, "rsa -in sa.key -pubout -out sa.pub")
    return pki


def sign(pki: Path, name: str, subject: str, extension: str) -> None:
    """Issue ``<name>.crt`` and ``<name>.key`` in ``pki`` from its CA (an openssl extension line)."""
    (pki / f"{name}.ext").write_text(extension + "\n")
    _openssl(pki, f"req -newkey rsa:2048 -nodes -keyout {name}.key -out {name}.csr", subject)
    _openssl(
        pki,
        f"x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2"
        f" -out {name}.crt -extfile {name}.ext",
    )


def _openssl(cwd: Path, command: str, subject: str = "/CN=earshot-test-ca") -> None:
    argv = ["openssl", *command.split()]
    if command.startswith("req"):
        argv += ["-subj", subject]
    subprocess.run(argv, cwd=cwd, check=True, capture_output=True, timeout=60)
