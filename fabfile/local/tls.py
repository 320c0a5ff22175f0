"""[tls] mode = "files" with local files: read the certificate chain and its key on the deploying machine and
check them before any connection (each is PEM; the key is the certificate's: their public keys are equal).
A problem is one ConfigError line naming the key and the file; the key's text is never in it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fabdeploy.config.tls import HOST_PATH
from fabdeploy.errors import ConfigError


@dataclass(frozen=True)
class LocalPair:
    """A local certificate chain and its key, checked."""

    chain: str  # PEM: the leaf first, then the intermediates
    key: str  # PEM (a secret: masked in every display)
    cert_path: Path
    key_path: Path


def is_local(value: str) -> bool:
    """A [tls] certificate/key value that names a local file (not "host:/path")."""
    return bool(value) and not value.startswith(HOST_PATH)


def local_path(base: Path, value: str) -> Path:
    return (base / Path(value).expanduser()).resolve()


def _read(path: Path, what: str, where: str) -> str:
    try:
        return path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise ConfigError(f"{where}tls.{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not a PEM text file"
        raise ConfigError(f"{where}tls.{what} {path}: cannot read: {why}") from None


def load_pair(base: Path, certificate: str, key: str, where: str = "") -> LocalPair:
    """Read and check both local files (relative to `base`, deploy.toml's directory)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    cert_path, key_path = local_path(base, certificate), local_path(base, key)
    chain, key_pem = _read(cert_path, "certificate", where), _read(key_path, "key", where)
    try:
        certs = x509.load_pem_x509_certificates(chain.encode())
    except ValueError:
        raise ConfigError(f"{where}tls.certificate {cert_path} is not a PEM certificate (chain)") from None
    try:
        private = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{where}tls.key {key_path} is not an unencrypted PEM private key") from None
    der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if certs[0].public_key().public_bytes(*der) != private.public_key().public_bytes(*der):
        raise ConfigError(f"{where}tls.key {key_path} does not match tls.certificate {cert_path} (the first "
                          "certificate of the chain has another public key)")
    return LocalPair(chain if chain.endswith("\n") else chain + "\n", key_pem if key_pem.endswith("\n") else key_pem + "\n",
                     cert_path, key_path)
