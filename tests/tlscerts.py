"""Certificates for the TLS tests, made with the openssl command: a CA, a leaf for some names signed by it
(its chain file: the leaf then the CA), and a key that belongs to neither."""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Certs:
    ca: Path  # the CA's certificate (what clients trust)
    chain: Path  # the leaf, then the CA: tls.certificate
    key: Path  # the leaf's key: tls.key
    other_key: Path  # a key of nothing here (a mismatch)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certs(d: Path, names: list[str], tag: str = "leaf") -> Certs:
    """A CA and a leaf for `names` (DNS names) in directory `d`."""
    d.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "30",
             "-subj", "/CN=fabdeploy test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={names[0]}",
             "-keyout", f"{tag}.key", "-out", f"{tag}.csr", cwd=d)
    (d / f"{tag}.ext").write_text("subjectAltName=" + ",".join(f"DNS:{n}" for n in names) + "\n"
                                  "extendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n")
    _openssl("x509", "-req", "-in", f"{tag}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "30", "-extfile", f"{tag}.ext", "-out", f"{tag}.pem", cwd=d)
    (d / f"{tag}-chain.pem").write_text((d / f"{tag}.pem").read_text() + (d / "ca.pem").read_text())
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "other.key", cwd=d)
    return Certs(d / "ca.pem", d / f"{tag}-chain.pem", d / f"{tag}.key", d / "other.key")
