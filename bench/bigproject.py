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

SETTINGS = "bigproject.settings"
WSGI = "bigproject.wsgi:application"
MESSAGE = "core/message.txt"
APPS = ["catalog", "orders", "accounts", "billing", "blog", "inventory", "support"]
MODULES_PER_APP = 10
FUNCTIONS_PER_MODULE = 60
STATIC_PER_APP = 16

MANAGE = '''#!/usr/bin/env python
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bigproject.settings")
    from django.core.management import execute_from_command_line
    execute_from_command_line(sys.argv)
'''

SETTINGS_PY = '''"""Settings of the benchmark's big project (development values; the deploy overlays production ones)."""
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "django-insecure-bench-big-project-development-only"
DEBUG = True
ALLOWED_HOSTS = []
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "core",
{apps}
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "bigproject.urls"
TEMPLATES = [{{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "DIRS": [],
    "APP_DIRS": True,
    "OPTIONS": {{"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]}},
}}]
WSGI_APPLICATION = "bigproject.wsgi.application"
DATABASES = {{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db.sqlite3"}}}}
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "/static/"
STORAGES = {{
    "default": {{"BACKEND": "django.core.files.storage.FileSystemStorage"}},
    "staticfiles": {{"BACKEND": "django.contrib.staticfiles.storage.ManifestStaticFilesStorage"}},
}}
MEDIA_URL = "/media/"
MEDIA_ROOT = BASE_DIR / "media"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
'''

URLS = '''from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
{apps}
    path("", include("core.urls")),
]
'''

WSGI_PY = '''import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bigproject.settings")
application = get_wsgi_application()
'''

CORE_VIEWS = '''import os
from pathlib import Path

from django.apps import apps
from django.conf import settings
from django.http import HttpResponse, JsonResponse
from django.shortcuts import render

MESSAGE_FILE = Path(__file__).resolve().parent / "message.txt"


def release():
    return getattr(settings, "FABDEPLOY_RELEASE", None) or os.environ.get("FABDEPLOY_RELEASE") or "dev"


def index(request):
    counts = {m._meta.label: m.objects.count() for m in apps.get_models() if m._meta.app_label in APPS}
    return render(request, "core/index.html", {"message": MESSAGE_FILE.read_text().strip(),
                                               "release": release(), "counts": sorted(counts.items())})


def health(request):
    return HttpResponse("ok", content_type="text/plain")


def stats(request):
    return JsonResponse({"release": release(), "pid": os.getpid(), "apps": APPS})


APPS = __APPS__
'''

CORE_INDEX = '''{% load static %}<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>bench big project</title>
  <link rel="stylesheet" href="{% static 'core/site.css' %}">
  <script src="{% static 'core/site.js' %}" defer></script>
</head>
<body>
  <h1>{{ message }}</h1>
  <p id="release">Release: {{ release }}</p>
  <ul>{% for label, n in counts %}<li>{{ label }}: {{ n }}</li>{% endfor %}</ul>
</body>
</html>
'''

MODELS = '''from django.db import models


class Category(models.Model):
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True, default="")

    def __str__(self):
        return self.name


class Tag(models.Model):
    label = models.CharField(max_length=50, unique=True)


class Item(models.Model):
    name = models.CharField(max_length=200)
    category = models.ForeignKey(Category, on_delete=models.CASCADE, related_name="items")
    slug = models.SlugField(max_length=200, blank=True, default="")
    price = models.DecimalField(max_digits=10, decimal_places=2, default=0)
    tags = models.ManyToManyField(Tag, through="ItemTag", blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["name"], name="{app}_item_name_idx")]

    def __str__(self):
        return self.name


class ItemTag(models.Model):
    item = models.ForeignKey(Item, on_delete=models.CASCADE)
    tag = models.ForeignKey(Tag, on_delete=models.CASCADE)


class Event(models.Model):
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=20)
    at = models.DateTimeField(auto_now_add=True)
'''

_ID = 'models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")'
MIGRATIONS = [
    ("0001_initial", f'''    initial = True
    dependencies = []
    operations = [
        migrations.CreateModel(name="Category", fields=[
            ("id", {_ID}),
            ("name", models.CharField(max_length=100)),
        ]),
        migrations.CreateModel(name="Tag", fields=[
            ("id", {_ID}),
            ("label", models.CharField(max_length=50, unique=True)),
        ]),
        migrations.CreateModel(name="Item", fields=[
            ("id", {_ID}),
            ("name", models.CharField(max_length=200)),
            ("created", models.DateTimeField(auto_now_add=True)),
            ("category", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="items",
                                           to="{{app}}.category")),
        ]),
    ]
'''),
    ("0002_item_slug", '''    dependencies = [("{app}", "0001_initial")]
    operations = [
        migrations.AddField(model_name="item", name="slug",
                            field=models.SlugField(blank=True, default="", max_length=200)),
    ]
'''),
    ("0003_item_price", '''    dependencies = [("{app}", "0002_item_slug")]
    operations = [
        migrations.AddField(model_name="item", name="price",
                            field=models.DecimalField(decimal_places=2, default=0, max_digits=10)),
        migrations.AddField(model_name="category", name="description",
                            field=models.TextField(blank=True, default="")),
    ]
'''),
    ("0004_itemtag", f'''    dependencies = [("{{app}}", "0003_item_price")]
    operations = [
        migrations.CreateModel(name="ItemTag", fields=[
            ("id", {_ID}),
            ("item", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, to="{{app}}.item")),
            ("tag", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, to="{{app}}.tag")),
        ]),
        migrations.AddField(model_name="item", name="tags",
                            field=models.ManyToManyField(blank=True, through="{{app}}.ItemTag", to="{{app}}.tag")),
    ]
'''),
    ("0005_event", f'''    dependencies = [("{{app}}", "0004_itemtag")]
    operations = [
        migrations.CreateModel(name="Event", fields=[
            ("id", {_ID}),
            ("kind", models.CharField(max_length=20)),
            ("at", models.DateTimeField(auto_now_add=True)),
            ("item", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="events",
                                       to="{{app}}.item")),
        ]),
    ]
'''),
    ("0006_item_name_idx", '''    dependencies = [("{app}", "0005_event")]
    operations = [
        migrations.AddIndex(model_name="item", index=models.Index(fields=["name"], name="{app}_item_name_idx")),
    ]
'''),
    ("0007_default_category", '''    dependencies = [("{app}", "0006_item_name_idx")]

    @staticmethod
    def forward(apps, schema_editor):
        Category = apps.get_model("{app}", "Category")
        Category.objects.get_or_create(name="default", defaults={{"description": "created by a data migration"}})

    operations = [migrations.RunPython(forward, migrations.RunPython.noop)]
'''),
]

APP_VIEWS = '''from django.shortcuts import get_object_or_404, render

from . import {imports}
from .models import Item


def items(request):
    return render(request, "{app}/items.html", {{"items": Item.objects.select_related("category")[:50]}})


def item(request, pk):
    return render(request, "{app}/item.html", {{"item": get_object_or_404(Item, pk=pk)}})
'''

APP_URLS = '''from django.urls import path

from . import views

app_name = "{app}"
urlpatterns = [path("", views.items, name="items"), path("<int:pk>/", views.item, name="item")]
'''

APP_ITEMS = '''{{% load static %}}<link rel="stylesheet" href="{{% static '{app}/style0.css' %}}">
<script src="{{% static '{app}/app0.js' %}}"></script>
<ul>{{% for i in items %}}<li><a href="{{% url '{app}:item' i.pk %}}">{{{{ i.name }}}}</a> ({{{{ i.category }}}})</li>{{% endfor %}}</ul>
'''

APP_ITEM = '''{{% load static %}}<img src="{{% static '{app}/icon0.svg' %}}" alt="">
<h1>{{{{ item.name }}}}</h1><p>{{{{ item.price }}}}</p>
'''


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
