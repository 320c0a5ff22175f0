"""The code to deploy: one gzip'd tar of the chosen git revision (or of a plain directory), plus wheels.

Members are under release/ (the project) and wheels/ (the wheelhouse, when used); the host extracts it once.
"""
from __future__ import annotations

import fnmatch
import hashlib
import io
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from fabdeploy.config import Config
from fabdeploy.errors import LocalError
from fabdeploy.local.requirements import collect, hash_input

# Never uploaded from a plain directory: these at any depth ...
EXCLUDE_ANYWHERE = [".git", "__pycache__", "*.pyc", ".pytest_cache", "node_modules"]
# ... and these only at the top (a nested static/app/media/ is the project's own).
EXCLUDE_TOP = [".venv", "venv", ".tox", "media", "db.sqlite3", "deploy.toml"]


@dataclass
class Source:
    kind: str  # "git" or "dir"
    revision: str  # full sha for git, content hash for a directory
    branch: str
    short: str
    tar: bytes  # uncompressed tar of the project, members at the top level
    requirements: bytes  # what the venv key hashes: the requirement file and every file it includes
    warnings: list[str]
    # project.requirements and every file it includes with -r/-c, path (relative to the source) -> content
    requirement_files: dict[str, bytes] = field(default_factory=dict)


def _git(src: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(src), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"]
        raise LocalError(f"git {' '.join(args)} in {src} failed: {lines[-1]}")
    return proc.stdout.strip()


def _is_git(src: Path) -> bool:
    proc = subprocess.run(["git", "-C", str(src), "rev-parse", "--is-inside-work-tree"],
                          capture_output=True, text=True)
    return proc.returncode == 0 and proc.stdout.strip() == "true"


def read_source(cfg: Config) -> Source:
    src = cfg.source_dir
    if not src.is_dir():
        raise LocalError(f"project.source {src} is not a directory")
    if _is_git(src):
        return _from_git(cfg, src)
    return _from_dir(cfg, src)


def _from_git(cfg: Config, src: Path) -> Source:
    rev = cfg.project.revision or "HEAD"
    proc = subprocess.run(["git", "-C", str(src), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise LocalError(f"project.revision {rev!r} is not a commit in {src}")
    sha = proc.stdout.strip()
    prefix = _git(src, "rev-parse", "--show-prefix")
    branch = ""
    if rev == "HEAD":
        branch = _git(src, "rev-parse", "--abbrev-ref", "HEAD")
        branch = "" if branch == "HEAD" else branch
    elif subprocess.run(["git", "-C", str(src), "show-ref", "--verify", "--quiet", f"refs/heads/{rev}"]).returncode == 0:
        branch = rev
    tree = f"{sha}:{prefix}" if prefix else sha
    top = _git(src, "rev-parse", "--show-toplevel")  # git archive in a subdirectory filters by it again
    proc = subprocess.run(["git", "-C", top, "archive", "--format=tar", tree], capture_output=True)
    if proc.returncode != 0:
        raise LocalError(f"git archive {rev} failed in {src}: {proc.stderr.decode(errors='replace').strip()}")
    warnings = []
    status = _git(src, "status", "--porcelain", "--", ".")
    if status:
        count = len(status.splitlines())
        warnings.append(f"{count} uncommitted change(s) in {src} are not deployed (deploying {rev} = {sha[:7]})")
    files = collect(cfg.project.requirements, lambda name: _member(proc.stdout, name), f"{rev} of {src}")
    return Source("git", sha, branch, sha[:7], proc.stdout, hash_input(files), warnings, files)


def _member(tar_bytes: bytes, name: str) -> bytes | None:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        try:
            f = tar.extractfile(name)
        except KeyError:
            return None
        return f.read() if f else None


def _excluded(rel: str, patterns: list[str]) -> bool:
    parts = rel.split("/")
    for pat in patterns:
        if fnmatch.fnmatch(rel, pat) or any(fnmatch.fnmatch(p, pat) for p in parts):
            return True
    return False


def _from_dir(cfg: Config, src: Path) -> Source:
    patterns = EXCLUDE_ANYWHERE + list(cfg.project.exclude)
    buf = io.BytesIO()
    digest = hashlib.sha256()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(src.rglob("*")):
            rel = path.relative_to(src).as_posix()
            if _excluded(rel, patterns) or rel.split("/")[0] in EXCLUDE_TOP:
                continue
            if path.is_symlink() or path.is_file():
                tar.add(path, arcname=rel, recursive=False)
                digest.update(rel.encode() + b"\0")
                if path.is_file() and not path.is_symlink():
                    digest.update(path.read_bytes())
            elif path.is_dir():
                tar.add(path, arcname=rel, recursive=False)
    if cfg.project.requirements and not (src / cfg.project.requirements).is_file():
        raise LocalError(f"{src / cfg.project.requirements} not found (project.requirements)")
    # read from the archive: an include that project.exclude leaves out is an error here, not on the host
    files = collect(cfg.project.requirements, lambda name: _member(buf.getvalue(), name), str(src))
    sha = digest.hexdigest()
    return Source("dir", sha, "", sha[:7], buf.getvalue(), hash_input(files), [], files)


def release_id(source: Source, now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now if now is not None else time.time()))
    return f"{stamp}-{source.short}"


# gzip's fastest level: wheels are already compressed, and for source code level 1 is several times faster
# than the default 6 for a few percent more bytes (README, speed).
COMPRESS_LEVEL = 1


def bundle(project_tar: bytes, wheels: list[Path]) -> bytes:
    """The upload: project under release/, wheels under wheels/, gzip'd at level 1 (COMPRESS_LEVEL)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", compresslevel=COMPRESS_LEVEL, format=tarfile.PAX_FORMAT) as dst:
        root = tarfile.TarInfo("release")
        root.type, root.mode, root.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
        dst.addfile(root)
        with tarfile.open(fileobj=io.BytesIO(project_tar)) as src:
            for member in src.getmembers():
                if member.name in ("pax_global_header",) or member.type == tarfile.XGLTYPE:
                    continue
                data = src.extractfile(member) if member.isfile() else None
                member.name = "release/" + member.name.removeprefix("./")
                if member.islnk():
                    member.linkname = "release/" + member.linkname
                dst.addfile(member, data)
        if wheels:
            wdir = tarfile.TarInfo("wheels")
            wdir.type, wdir.mode, wdir.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
            dst.addfile(wdir)
            for wheel in wheels:
                dst.add(wheel, arcname=f"wheels/{wheel.name}", recursive=False)
    return out.getvalue()
