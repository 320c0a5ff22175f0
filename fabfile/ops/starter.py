"""Getting started from an installed package: `fabdeploy init` (a commented deploy.toml guessed from the
project) and `fabdeploy example-config` (the full reference, shipped in the package).

The guesses are read from the project's files as text (nothing of the project is imported or run).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from fabdeploy.config import _NAME
from fabdeploy.errors import ConfigError
from fabdeploy.local.render import TEMPLATE_DIRS

EXAMPLE = "deploy.example.toml"  # in the templates (package data): the one copy of the reference

MANAGE_SETTINGS = re.compile(r"""DJANGO_SETTINGS_MODULE['"]\s*,\s*['"]([A-Za-z_][\w.]*)['"]""")
WSGI_SETTING = re.compile(r"""^WSGI_APPLICATION\s*=\s*['"]([A-Za-z_][\w.]*)['"]""", re.M)
ROOT_URLCONF = re.compile(r"^ROOT_URLCONF\s*=", re.M)
RELATIVE_IMPORT = re.compile(r"^from\s+\.(\w+)\s+import", re.M)
PRODUCTION_NAMES = ("production", "prod", "live", "deploy")
GENERIC_NAMES = ("base", "common", "defaults", "dev", "development", "local", "test", "tests", "testing")
REQUIREMENT_NAMES = ("production", "prod", "base", "common", "requirements")


def example_config() -> str:
    """The configuration reference (every key, its default and what it does), as shipped in the package."""
    for directory in TEMPLATE_DIRS:
        if (directory / EXAMPLE).is_file():
            return (directory / EXAMPLE).read_text(encoding="utf-8")
    raise ConfigError(f"{EXAMPLE} is missing from this fabdeploy installation (looked in "
                      f"{', '.join(map(str, TEMPLATE_DIRS))})")


@dataclass
class Guess:
    value: str
    why: str  # the comment written next to it: where the value came from, or a TODO


@dataclass
class Project:
    """What init learned about a Django project, each value with the reason for it."""

    name: Guess
    settings: Guess
    wsgi: Guess
    requirements: Guess
    health: Guess = field(default_factory=lambda: Guess("/", "the health check's page"))
    packages: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def module_path(root: Path, dotted: str) -> Path | None:
    """The file or package directory of a dotted module inside root."""
    base = root.joinpath(*dotted.split("."))
    if (base / "__init__.py").is_file():
        return base
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def package_modules(pkg: Path) -> list[str]:
    return sorted(p.stem for p in pkg.glob("*.py") if p.stem != "__init__")


def pick_module(mods: list[str]) -> str | None:
    """The module a production deploy most likely wants: production/prod/..., else one that is not
    base/dev/local/test..., else the first."""
    return (next((m for m in PRODUCTION_NAMES if m in mods), None)
            or next((m for m in mods if m not in GENERIC_NAMES), None) or (mods[0] if mods else None))


def guess_settings(root: Path) -> Guess:
    manage = root / "manage.py"
    named = None
    if manage.is_file():
        m = MANAGE_SETTINGS.search(manage.read_text(encoding="utf-8", errors="replace"))
        named = m.group(1) if m else None
    if named is None:
        found = sorted(p.parent.name for p in root.glob("*/settings.py"))
        if not found:
            return Guess("mysite.settings", "TODO: no settings module found (manage.py names none)")
        named = f"{found[0]}.settings"
        why = "from the first */settings.py (manage.py names no DJANGO_SETTINGS_MODULE)"
    else:
        why = "from the DJANGO_SETTINGS_MODULE default in manage.py"
    path = module_path(root, named)
    if path is None:
        return Guess(named, f"TODO: {why}, but it is not in the project directory: check it")
    if path.is_dir():
        init = (path / "__init__.py").read_text(encoding="utf-8", errors="replace")
        mods = package_modules(path)
        if not ROOT_URLCONF.search(init) and not RELATIVE_IMPORT.search(init) and mods:
            pick = pick_module(mods)
            return Guess(f"{named}.{pick}", f"manage.py names {named}, a package ({', '.join(mods)}) whose "
                         f"__init__ imports none of them: picked {pick} (check it; README: settings packages)")
    return Guess(named, why)


def guess_wsgi(root: Path, settings: str) -> Guess:
    """WSGI_APPLICATION of the settings module (or, in a package, of its modules), as module:callable."""
    candidates = []
    path = module_path(root, settings)
    if path is not None and path.is_file():
        candidates.append(path)
        parent = path.parent
        if (parent / "__init__.py").is_file():  # a module of a settings package: its siblings (base.py ...)
            candidates += sorted(p for p in parent.glob("*.py") if p != path)
    elif path is not None:
        candidates += [path / "__init__.py", *sorted(p for p in path.glob("*.py") if p.name != "__init__.py")]
    for file in candidates:
        m = WSGI_SETTING.search(file.read_text(encoding="utf-8", errors="replace"))
        if m:
            mod, _, attr = m.group(1).rpartition(".")
            return Guess(f"{mod}:{attr}", f"from WSGI_APPLICATION in {file.relative_to(root).as_posix()}")
    top = settings.split(".")[0]
    if (root / top / "wsgi.py").is_file():
        return Guess(f"{top}.wsgi:application", f"from {top}/wsgi.py (no WSGI_APPLICATION in the settings)")
    return Guess(f"{top}.wsgi:application", "TODO: no WSGI_APPLICATION or wsgi.py found")


ROOT_URLCONF = re.compile(r"""^ROOT_URLCONF\s*=\s*["']([\w.]+)["']""", re.M)
ROOT_ROUTE = re.compile(r"""(\bpath\(\s*r?["']["']|\b(re_path|url)\(\s*r?["']\^?\$?["'])""")
ADMIN_ROUTE = re.compile(r"""\bpath\(\s*["']([^"']*)["']\s*,\s*admin\.site\.urls""")


def guess_health(root: Path, settings: str) -> Guess:
    """A page for the health check (it needs a final 2xx): / when the URLconf routes it, else the admin's
    login page (a fresh `startproject` site has no page at /: a 404 would fail every deploy)."""
    urlconf = f"{settings.split('.')[0]}.urls"
    path = module_path(root, settings)
    for file in ([path] if path and path.is_file() else []) + ([path / "__init__.py"] if path and path.is_dir() else []):
        m = ROOT_URLCONF.search(file.read_text(encoding="utf-8", errors="replace"))
        if m:
            urlconf = m.group(1)
    file = module_path(root, urlconf)
    text = file.read_text(encoding="utf-8", errors="replace") if file and file.is_file() else ""
    # (not the examples in startproject's docstring, nor comments)
    text = re.sub(r'""".*?"""|\'\'\'.*?\'\'\'|#[^\n]*', "", text, flags=re.S)
    if ROOT_ROUTE.search(text):
        return Guess("/", f"{urlconf} routes /; the check needs a 2xx there (same-host redirects are followed)")
    m = ADMIN_ROUTE.search(text)
    if m:
        return Guess(f"/{m.group(1)}login/", f"{urlconf} has no page at / (a 404 fails the health check); "
                     "the admin login page answers 200. Better: a page of your own")
    return Guess("/", f"TODO: a page that answers 2xx ({urlconf} seems to have none at /; a 404 fails the check)")


def guess_requirements(root: Path) -> Guess:
    if (root / "requirements.txt").is_file():
        return Guess("requirements.txt", "found requirements.txt")
    found = sorted(p.relative_to(root).as_posix() for p in root.glob("requirements/*.txt"))
    for name in REQUIREMENT_NAMES:
        if f"requirements/{name}.txt" in found:
            return Guess(f"requirements/{name}.txt", f"picked from {', '.join(found)}")
    if found:
        return Guess(found[0], f"the first of {', '.join(found)}: check it")
    return Guess("", "no requirements.txt or requirements/*.txt found: pip.packages only")


def django_requirement() -> str:
    """Django as installed here (major.minor), else any Django."""
    try:
        from importlib.metadata import PackageNotFoundError, version
        major, minor = version("django").split(".")[:2]
        return f"Django>={major}.{minor},<{major}.{int(minor) + 1}"
    except (ImportError, PackageNotFoundError, ValueError):
        return "Django"


def inspect_project(root: Path) -> Project:
    if not root.is_dir():
        raise ConfigError(f"init: {root} is not a directory")
    if not (root / "manage.py").is_file():
        raise ConfigError(f"init: no manage.py in {root} (run it in the Django project, or pass --source DIR)")
    raw_name = root.resolve().name
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", raw_name).strip("-._") or "mysite"
    why = f"the directory name {raw_name!r}" + ("" if name == raw_name else " (made safe)")
    settings = guess_settings(root)
    reqs = guess_requirements(root)
    project = Project(Guess(name if _NAME.match(name) else "mysite", why), settings,
                      guess_wsgi(root, settings.value), reqs, guess_health(root, settings.value))
    if not reqs.value:
        project.packages = [django_requirement()]
    return project


def _toml(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _line(key: str, value: str, comment: str) -> str:
    return f"{key + ' = ' + value:<39} # {comment}"


def render(p: Project, source: str) -> str:
    """deploy.toml text: the guesses with their reasons, and TODOs for what only the user knows."""
    lines = [
        "# deploy.toml written by `fabdeploy init`: the project's own values were guessed (the comments say from",
        "# what); the TODO lines are yours to fill in. Every other key and its default: `fabdeploy example-config`.",
        "# Then: fabdeploy deploy, and fabdeploy manage -- createsuperuser (or fab deploy, fab manage ...).",
        "",
        "[project]",
        _line("name", _toml(p.name.value), f"from {p.name.why}; names the nginx site, uWSGI, logs"),
        _line("source", _toml(source), "the Django project (manage.py), relative to this file"),
        _line("django_settings", _toml(p.settings.value), p.settings.why),
        _line("wsgi", _toml(p.wsgi.value), p.wsgi.why),
        _line("requirements", _toml(p.requirements.value), p.requirements.why),
        _line("hosts", "[]", 'TODO: e.g. ["deploy@web1.example.com"] (or fab -H deploy@web1 deploy)'),
        "",
        "[paths]",
        _line("deploy_to", _toml(f"/srv/{p.name.value}"), "TODO: check; created with sudo if missing"),
        "",
        "[nginx]",
        _line("server_name", '"_"', 'TODO: your domain, e.g. "example.com www.example.com" (also ALLOWED_HOSTS)'),
        "",
        "[health]",
        _line("path", _toml(p.health.value), p.health.why),
        "",
        "[pip]",
        _line("wheelhouse", "false", "true: build wheels here, hosts need no package index"),
    ]
    if p.packages:
        lines.append(_line("packages", "[" + ", ".join(_toml(x) for x in p.packages) + "]",
                           "no requirements file: Django as installed here"))
    return "\n".join(lines) + "\n"


def write_init(source: str = ".", output: str = "deploy.toml") -> tuple[Path, Project]:
    """Write the guessed deploy.toml to `output` (never over an existing file)."""
    out = Path(output)
    if out.exists() or out.is_symlink():
        raise ConfigError(f"init: {out} already exists; not overwriting it (move it away, or pass --output FILE)")
    root = Path(source)
    project = inspect_project(root)
    rel = os.path.relpath(root.resolve(), out.resolve().parent)
    out.write_text(render(project, rel), encoding="utf-8")
    return out, project
