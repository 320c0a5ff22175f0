"""Requirement files: project.requirements and every file it includes with -r/-c (at any depth).

pip resolves an include relative to the file that names it; so do we, inside the deployed source tree
(an include that leaves it, or a URL, is refused: it would not be in the release). The result is a dict of
path (relative to the source) -> bytes, the top file first.
"""
from __future__ import annotations

import posixpath
import re
import shlex
from typing import Callable

from fabdeploy.errors import LocalError

_COMMENT = re.compile(r"(^|\s+)#.*$")
_LONG = re.compile(r"^(--requirement|--constraint)(?:(?:\s*=\s*|\s+)(.*))?$")
_SHORT = re.compile(r"^(-r|-c)\s*(.*)$")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)")


def logical_lines(text: str) -> list[str]:
    """pip's view of a requirement file: continuations joined, comments and blank lines dropped."""
    out, buf = [], ""
    for raw in text.splitlines():
        if raw.endswith("\\"):
            buf += raw[:-1]
            continue
        line = _COMMENT.sub("", buf + raw).strip()
        buf = ""
        if line:
            out.append(line)
    if buf.strip():
        out.append(_COMMENT.sub("", buf).strip())
    return [ln for ln in out if ln]


def include_of(line: str) -> tuple[str, str] | None:
    """("-r" or "-c", target) when the line includes another file (-r x, -rx, --requirement[=]x, same for -c)."""
    m = _LONG.match(line) or _SHORT.match(line)
    if not m:
        return None
    opt = "-r" if m.group(1) in ("-r", "--requirement") else "-c"
    try:
        words = shlex.split(m.group(2) or "")
    except ValueError:
        words = (m.group(2) or "").split()
    return opt, (words[0] if words else "")


def collect(top: str, read: Callable[[str], bytes | None], where: str) -> dict[str, bytes]:
    """Every file reachable from `top` through -r/-c, by normalized path; LocalError (one line naming the
    including file) for a missing file, a URL or a path outside the source tree. `where` names the source."""
    if not top:
        return {}
    data = read(top)
    if data is None:
        raise LocalError(f"{top} not found in {where} (project.requirements)")
    files = {top: data}
    todo = [top]
    while todo:
        parent = todo.pop(0)
        for line in logical_lines(files[parent].decode(errors="replace")):
            inc = include_of(line)
            if inc is None:
                continue
            opt, target = inc
            if not target:
                raise LocalError(f"{parent}: {opt} without a file name (project.requirements)")
            if _URL.match(target):
                raise LocalError(f"{parent}: {opt} {target} is a URL: fabdeploy deploys only requirement files "
                                 "inside project.source")
            path = posixpath.normpath(posixpath.join(posixpath.dirname(parent), target))
            if target.startswith("/") or path == ".." or path.startswith("../"):
                raise LocalError(f"{parent}: {opt} {target} leaves the source tree (it would not be deployed)")
            if path in files:
                continue
            content = read(path)
            if content is None:
                raise LocalError(f"{parent}: {opt} {target}: {path} not found in {where} "
                                 "(not committed, or excluded by project.exclude?)")
            files[path] = content
            todo.append(path)
    return files


def hash_input(files: dict[str, bytes]) -> bytes:
    """The bytes venv and wheel keys hash: the top file alone when it includes nothing (the key of an existing
    virtualenv stays what it was), else every file with its path."""
    items = list(files.items())
    if len(items) <= 1:
        return items[0][1] if items else b""
    top = items[0][1]
    return top + b"".join(b"\0" + path.encode() + b"\0" + data for path, data in sorted(items[1:]))


def normalize(name: str) -> str:
    """PEP 503 name normalization (Django_Foo.bar -> django-foo-bar)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def listed(files: dict[str, bytes]) -> dict[str, tuple[str, str, str]]:
    """Normalized project name -> (file, requirement line, marker or "") of every requirement line (first wins)."""
    out: dict[str, tuple[str, str, str]] = {}
    for path, data in files.items():
        for line in logical_lines(data.decode(errors="replace")):
            if line.startswith("-"):
                continue
            m = _NAME.match(line)
            if not m:
                continue
            _, _, marker = line.partition(";")
            key = normalize(m.group(1))
            if key not in out or (marker.strip() and not out[key][2]):  # a line with a marker says more
                out[key] = (path, line, marker.strip())
    return out
