"""project.django_settings naming a settings package: the django phase's import check, run for real in /bin/sh
(the sample project's settings turned into mysite-style settings/ packages inside a real release)."""
from __future__ import annotations

from pathlib import Path

import pytest

from fabdeploy.steps import django_app
from fabdeploy.remote.markers import MARK
from fabdeploy.remote.script import Script

from test_phases import _fresh_release, err, notes, out, sh

SETTINGS = Path(__file__).resolve().parent / "sample_project" / "sampleproject" / "settings.py"


def make_package(release: Path, init: str, modules=("base", "dev", "production")) -> None:
    """sampleproject/conf/ with __init__.py = `init`, base.py = the sample settings, the others import base."""
    pkg = release / "sampleproject" / "conf"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(init)
    for name in modules:
        text = SETTINGS.read_text() if name == "base" else "from .base import *  # noqa\n"
        (pkg / f"{name}.py").write_text(text.replace("BASE_DIR = Path(__file__).resolve().parent.parent",
                                                     "BASE_DIR = Path(__file__).resolve().parent.parent.parent"))


def run_django(tmp_path, init: str, modules=("base", "dev", "production")):
    flags = {"collectstatic": False, "check_deploy": False}
    cfg, lay, rel = _fresh_release(tmp_path, project={"django_settings": "sampleproject.conf"}, django=flags)
    make_package(Path(lay.release(rel.id)), init, modules)
    return sh(Script([django_app.django(cfg, rel)]), tmp_path)


@pytest.mark.parametrize("modules, pick", [(("base", "dev", "production"), "production"),
                                           (("base", "local", "staging"), "staging")])
def test_a_package_without_root_urlconf_is_one_line_listing_its_modules(tmp_path, modules, pick):
    proc = run_django(tmp_path, '"""Settings, split by environment."""\n', modules)
    assert proc.returncode == 1
    assert err(proc).strip().splitlines() == [
        f"{MARK} begin django",
        f"{MARK} error project.django_settings sampleproject.conf is a package ({', '.join(modules)}): "
        f"point it at one module, e.g. sampleproject.conf.{pick}",
        f"{MARK} end django 1"]
    assert notes(out(proc)) == []  # stopped before migrate


def test_a_package_whose_init_imports_a_module_is_a_settings_module(tmp_path):
    proc = run_django(tmp_path, "from .production import *  # noqa\n")
    assert proc.returncode == 0, err(proc)
    assert notes(out(proc))[0].endswith("migrations applied")
