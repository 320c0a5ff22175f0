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


def dated_leaf(certs: Certs, names: list[str], tag: str, days_from: float, days_to: float) -> tuple[Path, Path]:
    """A leaf for `names` signed by certs' CA, valid from now + days_from to now + days_to (negative: in the
    past, an expired certificate openssl's `-days` cannot make): (its chain file, its key file) beside the CA."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    d = certs.ca.parent
    ca_key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), password=None)
    ca = x509.load_pem_x509_certificate(certs.ca.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now + datetime.timedelta(days=days_from))
            .not_valid_after(now + datetime.timedelta(days=days_to))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    chain, key_file = d / f"{tag}-chain.pem", d / f"{tag}.key"
    chain.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + certs.ca.read_bytes())
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return chain, key_file
