"""The text of the big project's files (bench/bigproject.py fills in the app names and writes them)."""

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
