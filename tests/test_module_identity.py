"""One identity per module: the repository's `fabfile/` folder is the `fabdeploy` package; `fab` in the
checkout imports it as `fabfile`, which hands over fabdeploy's tasks and has no submodules of its own, so no
module (the hook registry, the executor) is ever loaded twice under two names."""
from __future__ import annotations

import subprocess
import sys

from conftest import REPO

PROBE = """
import importlib, sys
sys.path.insert(0, {repo!r})
import fabfile                      # what `fab` in the checkout imports
import fabdeploy.hooks, fabdeploy.executor, fabdeploy.tasks
assert fabfile.deploy is fabdeploy.tasks.deploy, "the tasks are fabdeploy's"
dupes = sorted(m for m in sys.modules if m.startswith("fabfile."))
assert not dupes, dupes
try:
    importlib.import_module("fabfile.hooks")
except ModuleNotFoundError:
    pass
else:
    raise AssertionError("fabfile.hooks is importable: a second hook registry")
print(sys.modules["fabdeploy"].__file__)
"""


def run(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=60)


def test_the_checkouts_fabfile_package_is_fabdeploy_and_nothing_loads_twice(tmp_path):
    res = run(PROBE.format(repo=str(REPO)), tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(REPO / "fabfile" / "__init__.py")


def test_without_an_installed_fabdeploy_the_checkout_still_loads_once(tmp_path):
    """(a checkout used with `fab` before `pip install -e .`: fabdeploy is loaded from the same folder)"""
    hide = ("import importlib.util, sys\nsys.meta_path = [f for f in sys.meta_path if 'editable' not in repr(f)]\n"
            "assert importlib.util.find_spec('fabdeploy') is None, 'fabdeploy is still installed'\n")
    res = run(hide + PROBE.format(repo=str(REPO)), tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(REPO / "fabfile" / "__init__.py")


def test_fab_list_in_the_checkout_shows_the_tasks():
    res = subprocess.run([str(REPO / ".venv" / "bin" / "fab"), "--list"], capture_output=True, text=True,
                         cwd=REPO, timeout=60)
    assert res.returncode == 0, res.stderr
    from fabdeploy import tasks
    for task in tasks.__all__:  # every task `from fabdeploy.tasks import *` gives a team is in the checkout's fab too
        assert f"  {task} " in res.stdout, task
