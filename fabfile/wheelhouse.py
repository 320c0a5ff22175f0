"""Virtualenv identity and the wheelhouse built on the deploying machine.

A host's virtualenv is keyed by a hash of what goes into it (requirements, the app-server package, the
host's Python version, where packages come from), so an unchanged one is reused without running pip.
With ``pip.wheelhouse = true`` the wheels are built here once (cached under ~/.cache/fabdeploy) and
uploaded inside the release archive; the host installs with --no-index.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .config import Config
from .errors import LocalError


def venv_hash(cfg: Config, requirements: bytes, python_version: str) -> str:
    h = hashlib.sha256()
    parts = (requirements, "\n".join(cfg.pip.packages).encode(), cfg.uwsgi.package.encode(),
             python_version.encode(), cfg.project.python.encode(), cfg.pip.index_url.encode(),
             b"wheelhouse" if cfg.pip.wheelhouse else b"index")
    for part in parts:
        h.update(part + b"\0")
    return h.hexdigest()[:16]


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fabdeploy" / "wheelhouse"


def _local_python(cfg: Config) -> str:
    return cfg.pip.wheel_python or sys.executable


def build_wheels(cfg: Config, requirements: bytes, python_version: str, key: str) -> list[Path]:
    """Wheels for the requirements and the app server, built by a local Python matching the host's."""
    target = cache_root() / key
    if (target / ".complete").is_file():
        return sorted(target.glob("*.whl"))
    py = _local_python(cfg)
    try:
        local_version = subprocess.run(
            [py, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        raise LocalError(f"pip.wheel_python {py!r} cannot be run") from None
    remote = ".".join(python_version.split(".")[:2])
    if local_version != remote:
        raise LocalError(f"wheelhouse: local Python {local_version} ({py}) cannot build wheels for the host's "
                         f"Python {remote}; set pip.wheel_python to a python{remote}")
    req_dir = (cfg.source_dir / cfg.project.requirements).parent
    req_dir = req_dir if req_dir.is_dir() else cfg.source_dir
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent))
    try:
        req_file = work / "requirements.txt"
        req_file.write_bytes(requirements)
        cmd = [py, "-m", "pip", "wheel", "--disable-pip-version-check", "--no-input", "-q",
               "-w", str(work / "wheels"), "-r", str(req_file), *cfg.pip.packages, cfg.uwsgi.package]
        if cfg.pip.index_url:
            cmd[4:4] = ["--index-url", cfg.pip.index_url]
        proc = subprocess.run(cmd, cwd=req_dir, capture_output=True, text=True, timeout=cfg.pip.timeout)
        if proc.returncode != 0:
            output = (proc.stderr or proc.stdout).strip()
            tail = " | ".join(line.strip() for line in output.splitlines()[-3:])
            hint = (f" (is the 'wheel' package installed for {py}? pip install wheel)"
                    if "bdist_wheel" in output else "")
            raise LocalError(f"wheelhouse: pip wheel failed: {tail}{hint}")
        (work / "wheels" / ".complete").touch()
        if target.exists():
            shutil.rmtree(target)
        (work / "wheels").rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return sorted(target.glob("*.whl"))
