"""The benchmark's second project, of realistic size, generated (never committed as a tree).

    generate(dest)  ->  dest/ holds a Django project "bigproject" that deploys with the same deploy.toml shape
                        as tests/sample_project (django_settings = "bigproject.settings",
                        wsgi = "bigproject.wsgi:application", health check on "/")

What it holds (sizes are those of the defaults):
  - 8 apps: `core` (the pages: index, health, item list, item detail, a JSON stats view) and 7 domain apps
    with real models (Category, Item with a foreign key, Tag, a many-to-many through ItemTag, Event), each
    with 7 migrations (create, add fields, a new model, an index, a data migration): 49 migrations of its
    own, 67 with Django's;
  - 16 static files per domain app (css whose url() points at the app's svg images, js) and 4 in core:
    116 files under ManifestStaticFilesStorage (post-processing rewrites the url()s), plus the admin's;
  - generated code: 10 modules of about 45 KB per domain app (about 3.2 MB of Python in all); each app's views import half of
    them, so the app server loads about 1.5 MB of code, as a project with a real service layer does.
`MESSAGE` is the file the benchmark rewrites for a code-only change.
"""
from __future__ import annotations

from pathlib import Path

from bigproject_text import (APP_ITEM, APP_ITEMS, APP_URLS, APP_VIEWS, CORE_INDEX, CORE_VIEWS, MANAGE, MIGRATIONS,
                             MODELS, SETTINGS_PY, URLS, WSGI_PY)

SETTINGS = "bigproject.settings"
WSGI = "bigproject.wsgi:application"
MESSAGE = "core/message.txt"
APPS = ["catalog", "orders", "accounts", "billing", "blog", "inventory", "support"]
MODULES_PER_APP = 10
FUNCTIONS_PER_MODULE = 60
STATIC_PER_APP = 16

def _function(app: str, m: int, i: int) -> str:
    return f'''

def {app}_rule_{m}_{i}(values, factor={i % 7 + 1}, limit={1000 + i}):
    """Business rule {i} of module {m} of {app}: a weighted sum with a cap (generated)."""
    total = 0
    for n, value in enumerate(values):
        if value % {i % 5 + 2} == 0:
            total += value * factor
        elif n % 3 == {i % 3}:
            total -= n
        else:
            total += {i} - value
        if total > limit:
            return limit
    return total


class {app.capitalize()}Policy{m}x{i}:
    """Policy object {i} of module {m} (generated)."""
    name = "{app}-{m}-{i}"
    weights = {{"a": {i}, "b": {m}, "c": {i * m % 97}}}

    def apply(self, record):
        score = sum(self.weights.values())
        return {{**record, "score": score + len(self.name), "rule": {app}_rule_{m}_{i}(record.get("values", []))}}
'''


def _svg(app: str, n: int) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16"><title>{app} {n}</title>'
            f'<circle cx="8" cy="8" r="{n % 7 + 1}" fill="#{(n * 2654435761) % 0xFFFFFF:06x}"/></svg>\n')


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _app(dest: Path, app: str) -> None:
    base = dest / app
    _write(base / "__init__.py", "")
    _write(base / "apps.py", f"from django.apps import AppConfig\n\n\nclass {app.capitalize()}Config(AppConfig):\n"
                             f'    name = "{app}"\n    default_auto_field = "django.db.models.BigAutoField"\n')
    _write(base / "models.py", MODELS.replace("{app}", app))
    _write(base / "admin.py", "from django.contrib import admin\n\nfrom .models import Category, Event, Item, Tag\n\n"
                              "admin.site.register([Category, Item, Tag, Event])\n")
    _write(base / "migrations" / "__init__.py", "")
    for name, body in MIGRATIONS:
        header = "import django.db.models.deletion\nfrom django.db import migrations, models\n\n\n"
        _write(base / "migrations" / f"{name}.py", header + "class Migration(migrations.Migration):\n"
               + body.replace("{app}", app).replace("{{", "{").replace("}}", "}"))
    modules = [f"logic{m:02d}" for m in range(MODULES_PER_APP)]
    for m, mod in enumerate(modules):
        _write(base / f"{mod}.py", f'"""Generated service code of {app} ({mod})."""\n'
               + "".join(_function(app, m, i) for i in range(FUNCTIONS_PER_MODULE)))
    _write(base / "views.py", APP_VIEWS.format(app=app, imports=", ".join(modules[:MODULES_PER_APP // 2])
                                               + "  # noqa: F401 (the service layer, loaded at start)"))
    _write(base / "urls.py", APP_URLS.format(app=app))
    _write(base / "templates" / app / "items.html", APP_ITEMS.format(app=app))
    _write(base / "templates" / app / "item.html", APP_ITEM.format(app=app))
    static = base / "static" / app
    per_kind = STATIC_PER_APP // 4
    for n in range(per_kind * 2):
        _write(static / f"icon{n}.svg", _svg(app, n))
    for n in range(per_kind):
        _write(static / f"style{n}.css", f".{app}-{n} {{ background: url('icon{n}.svg') no-repeat; }}\n"
                                         f".{app}-{n}-alt {{ background-image: url(\"icon{n + per_kind}.svg\"); }}\n")
        _write(static / f"app{n}.js", f"document.documentElement.dataset.{app}{n} = 'ready';\n")


def generate(dest: Path) -> Path:
    """Write the big project into dest (created); returns dest."""
    dest = Path(dest)
    _write(dest / "manage.py", MANAGE)
    _write(dest / "requirements.txt", "Django>=5.2,<5.3\n")
    pkg = dest / "bigproject"
    _write(pkg / "__init__.py", "")
    _write(pkg / "settings.py", SETTINGS_PY.format(apps="\n".join(f'    "{a}",' for a in APPS)))
    _write(pkg / "urls.py", URLS.format(apps="\n".join(f'    path("{a}/", include("{a}.urls")),' for a in APPS)))
    _write(pkg / "wsgi.py", WSGI_PY)
    core = dest / "core"
    _write(core / "__init__.py", "")
    _write(core / "migrations" / "__init__.py", "")
    _write(core / "views.py", CORE_VIEWS.replace("__APPS__", repr(APPS)))
    _write(core / "urls.py", 'from django.urls import path\n\nfrom . import views\n\nurlpatterns = [\n'
                             '    path("", views.index, name="index"),\n    path("health", views.health),\n'
                             '    path("stats", views.stats),\n]\n')
    _write(core / "templates" / "core" / "index.html", CORE_INDEX)
    _write(dest / MESSAGE, "initial\n")
    _write(core / "static" / "core" / "site.css", "body { background: url('bg.svg'); font-family: sans-serif; }\n")
    _write(core / "static" / "core" / "bg.svg", _svg("core", 0))
    _write(core / "static" / "core" / "site.js", "document.title += ' (ready)';\n")
    _write(core / "static" / "core" / "print.css", "@import url('site.css');\nbody { color: black; }\n")
    for app in APPS:
        _app(dest, app)
    return dest
