"""Render the jinja2 templates (uWSGI ini, nginx site, production settings module).

jinja2 is imported by the first render, not with this module (about 14 ms of every fab start): commands that
render nothing (fab --list, status, logs, releases, rollback...) never load it."""
from __future__ import annotations

import functools
from pathlib import Path
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
    return _shared().get_template(template).render(**context)


def render_file(path: Path, what: str, **context) -> str:
    """Render a user's template file; any template problem is one ConfigError line naming `what`."""
    import jinja2
    try:
        return environment([path.parent]).get_template(path.name).render(**context)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"{what} {path}: line {exc.lineno}: {exc.message}") from None
    except jinja2.TemplateError as exc:
        raise ConfigError(f"{what} {path}: {exc}") from None
