"""Render the jinja2 templates (uWSGI ini, nginx site, production settings module).

jinja2 is imported by the first render, not with this module (about 14 ms of every fab start): commands that
render nothing (fab --list, status, logs, releases, rollback...) never load it."""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import hashlib
from pathlib import Path, PurePath
from typing import TYPE_CHECKING

from fabdeploy.errors import ConfigError

if TYPE_CHECKING:
    import jinja2

_PACKAGE = Path(__file__).resolve().parents[1]
# Installed: fabdeploy/templates; in a checkout (or an editable install): <repo>/templates.
TEMPLATE_DIRS = [p for p in (_PACKAGE / "templates", _PACKAGE.parent / "templates") if p.is_dir()]


def _ini_value(value) -> str:
    """uWSGI expands %(...) and %x in ini values; %% is a literal percent."""
    return str(value).replace("%", "%%")


def environment(extra_dirs=()) -> jinja2.Environment:
    import jinja2
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(d) for d in extra_dirs] + [str(d) for d in TEMPLATE_DIRS]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["pyrepr"] = repr
    env.filters["ini"] = _ini_value
    return env


@functools.lru_cache(maxsize=1)
def _shared() -> jinja2.Environment:
    """fabdeploy's own templates: one environment per process, so each template is compiled once (a deploy
    renders the same ones for every host's fingerprint and again for its configs)."""
    return environment()


def render(template: str, **context) -> str:
    if _DIGESTS.get():
        digest = context_digest(template, context)
        if digest is not None:
            return digest
    return _shared().get_template(template).render(**context)


# Digest mode (the "already live" fingerprint, steps/live_check.py): what a render would produce is decided by
# the template text (fabdeploy's templates, with what they include, and this module's filters) and the context,
# so a hash of both tells the same "changed or not" without jinja2 (its import and compiling the templates:
# about 30 ms of a no-op redeploy). A context holding a value with no exact text (an object that is not a
# plain value, dataclass, attribute holder, list, dict or path) is rendered as before. A user's template
# (render_file) is always rendered.
_DIGESTS: contextvars.ContextVar[bool] = contextvars.ContextVar("fabdeploy_render_digests", default=False)


@contextlib.contextmanager
def digests():
    """Within this block render() returns a digest of the template set and the context (see above)."""
    token = _DIGESTS.set(True)
    try:
        yield
    finally:
        _DIGESTS.reset(token)


@functools.lru_cache(maxsize=1)
def _templates_digest() -> str:
    """fabdeploy's templates (every one: they include each other) and this module (the filters)."""
    h = hashlib.sha256(Path(__file__).read_bytes())
    for d in TEMPLATE_DIRS:
        for f in sorted(d.glob("*.j2")):
            h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def context_digest(template: str, context: dict) -> str | None:
    """The digest render() returns in digest mode: None when a context value has no exact text."""
    try:
        text = _exact(context)
    except TypeError:
        return None
    body = hashlib.sha256(f"{_templates_digest()}\0{template}\0{text}".encode()).hexdigest()
    return f"{template} digest {body}"


def _exact(value) -> str:
    """A text that differs whenever the value (as a template could see it) differs, else TypeError."""
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return repr(value)
    if isinstance(value, PurePath):
        return f"Path({str(value)!r})"
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: repr(kv[0]))
        return "{" + ", ".join(f"{_exact(k)}: {_exact(v)}" for k, v in items) + "}"
    if isinstance(value, (list, tuple)):
        return type(value).__name__ + "[" + ", ".join(_exact(v) for v in value) + "]"
    if isinstance(value, (set, frozenset)):
        return type(value).__name__ + "{" + ", ".join(sorted(_exact(v) for v in value)) + "}"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return type(value).__qualname__ + "(" + ", ".join(
            f"{f.name}={_exact(getattr(value, f.name))}" for f in dataclasses.fields(value)) + ")"
    if hasattr(value, "__dict__") and set(vars(type(value))) <= _PLAIN_CLASS:  # an attribute holder (config._Section)
        return type(value).__qualname__ + _exact(vars(value))
    raise TypeError(f"no exact text for {type(value).__name__}")


# A class with nothing but an __init__ (no properties, no methods): what a template sees is the instance's attributes.
# (__static_attributes__ and __firstlineno__: what Python 3.13 adds to every class.)
_PLAIN_CLASS = {"__init__", "__module__", "__dict__", "__weakref__", "__doc__", "__qualname__",
                "__static_attributes__", "__firstlineno__"}


def render_file(path: Path, what: str, **context) -> str:
    """Render a user's template file; any template problem is one ConfigError line naming `what`."""
    import jinja2
    try:
        return environment([path.parent]).get_template(path.name).render(**context)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"{what} {path}: line {exc.lineno}: {exc.message}") from None
    except jinja2.TemplateError as exc:
        raise ConfigError(f"{what} {path}: {exc}") from None
