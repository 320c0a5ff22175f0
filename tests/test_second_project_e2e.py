"""A second, different Django project (plain `django-admin startproject` + one app) deploys with only a
deploy.toml, next to the sample project on the same host (two nginx sites, two uWSGI instances)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import hostlab
from conftest import BIN, git, make_project, release_of, run_fab, sample_config

VIEWS = '''from django.http import HttpResponse
from .models import Post


def index(request):
    return HttpResponse(f"blog home, {Post.objects.count()} posts")
'''
MODELS = '''from django.db import models


class Post(models.Model):
    title = models.CharField(max_length=100)
'''


@pytest.fixture(scope="module")
def host(make_host):
    return make_host("second")


def startproject(root):
    src = root / "src"
    src.mkdir(parents=True)
    subprocess.run([str(BIN / "django-admin"), "startproject", "mysite2", str(src)], check=True)
    subprocess.run([sys.executable, "manage.py", "startapp", "blog"], cwd=src, check=True)
    (src / "blog" / "models.py").write_text(MODELS)
    (src / "blog" / "views.py").write_text(VIEWS)
    settings = src / "mysite2" / "settings.py"
    settings.write_text(settings.read_text().replace("'django.contrib.staticfiles',",
                                                     "'django.contrib.staticfiles',\n    'blog',"))
    urls = src / "mysite2" / "urls.py"
    urls.write_text(urls.read_text().replace("from django.urls import path", "from django.urls import path\n"
                                             "from blog.views import index")
                    .replace("urlpatterns = [", 'urlpatterns = [\n    path("", index),'))
    subprocess.run([sys.executable, "manage.py", "makemigrations", "blog"], cwd=src, check=True,
                   capture_output=True)
    for leftover in src.glob("db.sqlite3"):
        leftover.unlink()
    git(src, "init", "-q", "-b", "main")
    git(src, "add", "-A")
    git(src, "commit", "-q", "-m", "startproject")
    (root / "fabfile.py").write_text("from fabdeploy.tasks import *\n")
    return src


def test_startproject_site_deploys_with_only_a_deploy_toml(host, tmp_path, wheel_cache):
    startproject(tmp_path)
    (tmp_path / "deploy.toml").write_text(textwrap.dedent(f"""\
        [project]
        name = "mysite2"
        source = "src"
        django_settings = "mysite2.settings"
        wsgi = "mysite2.wsgi:application"
        requirements = ""
        [django]
        allowed_hosts = ["blog.test"]
        [paths]
        deploy_to = "/srv/mysite2"
        [nginx]
        server_name = "blog.test www.blog.test"
        [pip]
        wheelhouse = true
        packages = ["Django>=5.2,<5.3"]
        [ssh]
        known_hosts = "{hostlab.known_hosts()}"
        identity_file = "{hostlab.client_key()}"
        """))
    res = run_fab(tmp_path, "-H", host.ssh_target(), "deploy", cache=wheel_cache)
    # nginx routes www.blog.test to the app, but it is not in ALLOWED_HOSTS: every visitor using that name
    # would get 400, so the health check (which sends each server name) fails the deploy, naming both
    assert res.returncode == 1, res.stdout + res.stderr
    assert "(Host: www.blog.test) -> 400" in res.stderr and "ALLOWED_HOSTS" in res.stderr, res.stderr
    # Django refuses it, with no debug details (DEBUG is off)
    status, _, body = host.http("/", host_header="www.blog.test")
    assert status == 400 and b"DisallowedHost" not in body and b"ALLOWED_HOSTS" not in body
    # allowed_hosts left to its default (the server names): the next deploy is healthy
    config = tmp_path / "deploy.toml"
    config.write_text(config.read_text().replace('[django]\nallowed_hosts = ["blog.test"]\n', ""))
    res = run_fab(tmp_path, "-H", host.ssh_target(), "deploy", cache=wheel_cache)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "http://blog.test/" in res.stdout
    status, headers, body = host.http("/", host_header="blog.test")
    assert status == 200 and body == b"blog home, 0 posts"
    # The admin's own static files are collected to shared/ and served by nginx.
    status, headers, body = host.http("/static/admin/css/base.css", host_header="blog.test")
    assert status == 200 and b"body" in body and "etag" in headers
    status, _, body = host.http("/admin/login/", host_header="blog.test")
    assert status == 200 and b"/static/admin/css/base.css" in body
    assert host.http("/", host_header="www.blog.test")[0] == 200


def test_two_projects_share_a_host(host, tmp_path, wheel_cache):
    proj = make_project(tmp_path)
    proj.write_config(sample_config(host))
    res = run_fab(proj.root, "-H", host.ssh_target(), "deploy", cache=wheel_cache)
    assert res.returncode == 0, res.stdout + res.stderr
    rel = release_of(res.stdout)
    assert f"Release: {rel}".encode() in host.http("/", host_header=host.address)[2]
    assert host.http("/", host_header="blog.test")[2] == b"blog home, 0 posts"
    sites = sorted(p.name for p in host.path("/etc/nginx/sites-enabled").iterdir())
    assert "mysite2" in sites and "sample" in sites
