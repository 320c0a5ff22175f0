"""`fabdeploy init`: the guesses read from a project's files, the deploy.toml text, and its refusals."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from fabdeploy.config import parse_config
from fabdeploy.errors import ConfigError
from fabdeploy.ops.starter import inspect_project as inspect, write_init

from conftest import BIN, SAMPLE


def sample_copy(tmp_path, name="shopsite") -> Path:
    dst = tmp_path / name
    shutil.copytree(SAMPLE, dst, ignore=shutil.ignore_patterns("__pycache__", "db.sqlite3"))
    return dst


def split_settings(project: Path, init: str = "") -> None:
    """sampleproject/settings.py -> sampleproject/settings/ (base, dev, production), as many projects do."""
    flat = project / "sampleproject" / "settings.py"
    text = flat.read_text().replace("BASE_DIR = Path(__file__).resolve().parent.parent",
                                    "BASE_DIR = Path(__file__).resolve().parent.parent.parent")
    flat.unlink()
    pkg = project / "sampleproject" / "settings"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(init)
    (pkg / "base.py").write_text(text)
    (pkg / "dev.py").write_text("from .base import *  # noqa\n")
    (pkg / "production.py").write_text("from .base import *  # noqa\nDEBUG = False\n")


def test_sample_project(tmp_path):
    p = inspect(sample_copy(tmp_path))
    assert (p.name.value, p.settings.value, p.wsgi.value, p.requirements.value) == (
        "shopsite", "sampleproject.settings", "sampleproject.wsgi:application", "requirements.txt")
    assert p.packages == []
    assert p.wsgi.why == "from WSGI_APPLICATION in sampleproject/settings.py"


def test_startproject_layout(tmp_path):
    subprocess.run([str(BIN / "django-admin"), "startproject", "mysite"], cwd=tmp_path, check=True)
    p = inspect(tmp_path / "mysite")
    assert (p.name.value, p.settings.value, p.wsgi.value, p.requirements.value) == (
        "mysite", "mysite.settings", "mysite.wsgi:application", "")
    import django
    major, minor = django.VERSION[:2]
    assert p.packages == [f"Django>={major}.{minor},<{major}.{minor + 1}"]


def test_settings_package_picks_the_production_module(tmp_path):
    project = sample_copy(tmp_path)
    split_settings(project)
    p = inspect(project)
    assert p.settings.value == "sampleproject.settings.production"
    assert "a package (base, dev, production) whose __init__ imports none of them" in p.settings.why
    assert p.wsgi.value == "sampleproject.wsgi:application"
    assert p.wsgi.why == "from WSGI_APPLICATION in sampleproject/settings/base.py"


def test_settings_package_that_imports_a_module_is_kept(tmp_path):
    project = sample_copy(tmp_path)
    split_settings(project, init="from .production import *  # noqa\n")
    p = inspect(project)
    assert p.settings.value == "sampleproject.settings"


def test_requirements_directory(tmp_path):
    project = sample_copy(tmp_path)
    (project / "requirements.txt").rename(tmp_path / "gone.txt")
    (project / "requirements").mkdir()
    for name in ("base", "dev", "production"):
        (project / "requirements" / f"{name}.txt").write_text("Django\n")
    assert inspect(project).requirements.value == "requirements/production.txt"


def test_written_file_parses_explains_and_marks_todos(tmp_path, monkeypatch):
    sample_copy(tmp_path)
    monkeypatch.chdir(tmp_path)
    path, _ = write_init("shopsite")
    text = path.read_text()
    cfg = parse_config(tomllib.loads(text))
    assert (cfg.project.name, cfg.project.source, cfg.paths.deploy_to) == ("shopsite", "shopsite", "/srv/shopsite")
    assert cfg.project.django_settings == "sampleproject.settings"
    assert "# from the DJANGO_SETTINGS_MODULE default in manage.py" in text
    for key in ("hosts = []", 'deploy_to = "/srv/shopsite"', 'server_name = "_"'):
        line = next(ln for ln in text.splitlines() if ln.startswith(key))
        assert "# TODO:" in line


def test_refuses_an_existing_file_and_a_directory_without_manage_py(tmp_path, monkeypatch):
    sample_copy(tmp_path)
    monkeypatch.chdir(tmp_path)
    Path("deploy.toml").write_text("# mine\n")
    with pytest.raises(ConfigError, match=r"^init: deploy.toml already exists; not overwriting it"):
        write_init("shopsite")
    assert Path("deploy.toml").read_text() == "# mine\n"
    with pytest.raises(ConfigError, match=r"^init: no manage.py in \. "):
        write_init(".", "other.toml")
    assert not Path("other.toml").exists()


def test_fabdeploy_init_command_line(tmp_path):
    project = sample_copy(tmp_path)
    run = lambda: subprocess.run([str(BIN / "fabdeploy"), "init"], cwd=project, capture_output=True, text=True,
                                 timeout=60)
    res = run()
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("wrote deploy.toml: name shopsite, settings sampleproject.settings")
    assert tomllib.loads((project / "deploy.toml").read_text())["project"]["source"] == "."
    res = run()
    assert res.returncode == 1
    assert res.stderr == ("fabdeploy: init: deploy.toml already exists; not overwriting it "
                          "(move it away, or pass --output FILE)\n")


@pytest.mark.parametrize("urls, want", [
    ('urlpatterns = [path("", views.home), path("admin/", admin.site.urls)]', "/"),
    ('urlpatterns = [re_path(r"^$", views.home)]', "/"),
    # startproject: only the admin (its docstring's `path('', ...)` examples do not count)
    ('"""\nExamples:\n    path(\'\', views.home, name=\'home\')\n"""\n# path("", x)\n'
     'urlpatterns = [path("backoffice/", admin.site.urls)]', "/backoffice/login/"),
    ('urlpatterns = [path("api/", include("api.urls"))]', "/"),
])
def test_init_guesses_a_health_page_that_answers_2xx(tmp_path, urls, want):
    project = sample_copy(tmp_path)
    (project / "sampleproject" / "urls.py").write_text(urls + "\n")
    guess = inspect(project).health
    assert guess.value == want
    assert ("TODO" in guess.why) is (want == "/" and "api" in urls)
