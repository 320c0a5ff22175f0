"""Virtualenv identity and the wheelhouse built on the deploying machine.

A host's virtualenv is keyed by a hash of what goes into it (requirements, the app-server package, the
host's Python version, where packages come from), so an unchanged one is reused without running pip.
With ``pip.wheelhouse = true`` the wheels are built here once, by a local Python of exactly the host's version
and platform (cached under ~/.cache/fabdeploy), and uploaded inside the release archive; the host installs
with --no-index.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from fabdeploy import appserver, database
from fabdeploy.config import Config
from fabdeploy.errors import LocalError


def venv_hash(cfg: Config, requirements: bytes, python_version: str) -> str:
    h = hashlib.sha256()
    parts = (requirements, "\n".join(cfg.pip.packages).encode(), " ".join(appserver.of(cfg).requirements(cfg)).encode(),
             *([" ".join(database.requirements(cfg)).encode()] if database.requirements(cfg) else []),
             python_version.encode(), cfg.project.python.encode(), cfg.pip.index_url.encode(),
             b"wheelhouse" if cfg.pip.wheelhouse else b"index")
    for part in parts:
        h.update(part + b"\0")
    return h.hexdigest()[:16]


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fabdeploy" / "wheelhouse"


# Run by the host's and the building Python (one startup): its full version, then implementation, platform
# and C library; wheels and environment markers depend on all of them.
PYTHON_FACTS_PY = ('import sys, sysconfig, platform; print("%d.%d.%d" % sys.version_info[:3]); '
                   'print(sys.implementation.name, sysconfig.get_platform(), "-".join(platform.libc_ver()) or "-")')


def _local_python(cfg: Config) -> str:
    return cfg.pip.wheel_python or sys.executable


def local_python_facts(cfg: Config) -> tuple[str, str, str]:
    """(interpreter path, full version, platform) of the Python that builds the wheelhouse."""
    py = _local_python(cfg)
    try:
        out = subprocess.run([py, "-c", PYTHON_FACTS_PY], capture_output=True, text=True, check=True,
                             timeout=60).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        raise LocalError(f"pip.wheel_python {py!r} cannot be run") from None
    if len(out) < 2:
        raise LocalError(f"pip.wheel_python {py!r} did not report its version and platform")
    return shutil.which(py) or py, out[0].strip(), out[1].strip()


def wheel_key(cfg: Config, venv_key: str, files: dict[str, bytes], host: tuple[str, str],
              builder: tuple[str, str, str]) -> str:
    """The wheel cache key: the venv key (requirements, packages, host Python version, index) plus every
    requirement file by path, the host's platform and the building interpreter (path, version, platform)."""
    h = hashlib.sha256()
    parts = [venv_key, *host, *builder, cfg.pip.index_url, " ".join(appserver.of(cfg).requirements(cfg)),
             *cfg.pip.packages, *database.requirements(cfg)]
    for part in parts:
        h.update(part.encode() + b"\0")
    for path, data in sorted(files.items()):
        h.update(path.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()[:16]


def build_wheels(cfg: Config, files: dict[str, bytes], host_version: str, host_platform: str,
                 venv_key: str) -> list[Path]:
    """Wheels for the requirement files (project.requirements first, with its -r/-c includes) and the app
    server, built by a local Python of exactly the host's version and platform (refused otherwise, before
    anything is uploaded); cached under a key of everything that changes the result."""
    py, local_version, local_platform = local_python_facts(cfg)
    if (local_version, local_platform) != (host_version, host_platform):
        raise LocalError(f"wheelhouse: the host runs Python {host_version} ({host_platform}) but {py} is Python "
                         f"{local_version} ({local_platform}); set pip.wheel_python to a Python {host_version} "
                         f"for {host_platform} (environment markers and wheels depend on the exact version)")
    key = wheel_key(cfg, venv_key, files, (host_version, host_platform), (py, local_version, local_platform))
    target = cache_root() / key
    if (target / ".complete").is_file():
        return sorted(target.glob("*.whl"))
    top = next(iter(files), "")
    req_dir = (cfg.source_dir / top).parent if top else cfg.source_dir
    req_dir = req_dir if req_dir.is_dir() else cfg.source_dir
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent))
    try:
        # the requirement files at their paths, so that -r/-c includes resolve as they do in the release
        for path, data in files.items():
            (work / "req" / path).parent.mkdir(parents=True, exist_ok=True)
            (work / "req" / path).write_bytes(data)
        reqs = ["-r", str(work / "req" / top)] if top else []
        cmd = [py, "-m", "pip", "wheel", "--disable-pip-version-check", "--no-input", "-q",
               "-w", str(work / "wheels"), *reqs, *cfg.pip.packages, *appserver.of(cfg).requirements(cfg),
               *database.requirements(cfg)]
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
