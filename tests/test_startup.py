"""fab's own start and end (issue 16): what a plain `fab` start imports, and the quick exit.

No timing here: each test runs a fresh interpreter and looks at what it loaded (sys.modules) or what it
did at exit (the garbage collector frozen), so a change that makes every fab command slower fails by name.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Modules a plain start (every fab command: its tasks collected, --list, --help, a deploy before it renders)
# must not load: each is imported where the one task or step that needs it runs.
LAZY = ("jinja2", "markupsafe", "asyncio", "unittest", "django", "fabdeploy.provision", "fabdeploy.ops.doctor",
        "fabdeploy.ops.dbtasks", "fabdeploy.ops.sudoers", "fabdeploy.front.acme")


def run_python(code: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def lazy_ones(modules) -> list[str]:
    return sorted(m for m in modules if any(m == name or m.startswith(name + ".") for name in LAZY))


def test_importing_the_tasks_adds_none_of_the_lazy_modules_to_what_fabric_loads():
    """What fabdeploy.tasks loads beyond fab itself (fabric.main: Fabric, Invoke, paramiko; Invoke brings
    asyncio and unittest.mock): none of LAZY."""
    code = ("import json, sys, fabric.main\nbefore = set(sys.modules)\nimport fabdeploy.tasks\n"
            "print(json.dumps(sorted(set(sys.modules) - before)))")
    res = run_python(code)
    assert res.returncode == 0, res.stderr
    added = json.loads(res.stdout)
    assert "fabdeploy.tasks" in added and "fabdeploy.pipeline" in added
    assert lazy_ones(added) == []


def test_fab_list_and_help_are_complete_without_the_lazy_modules():
    """`fab --list` (in this checkout: fabfile/ and fabric.yaml) names every task, `fab --help deploy` shows
    the task's docstring and options, and neither loads a LAZY module beyond what fab itself loads (fab's own
    program, in one process)."""
    code = ("import json, sys\nfrom fabric.main import program\nsys.argv = ['fab'] + sys.argv[1:]\n"
            "before = set(sys.modules)\n"
            "try:\n    program.run()\nexcept SystemExit:\n    pass\n"
            "print('MODULES=' + json.dumps(sorted(set(sys.modules) - before)))")
    for args, wanted in ((["--list"], ["deploy", "rollback", "provision", "doctor", "db", "status", "logs",
                                       "secrets", "sudoers", "manage", "unlock", "releases"]),
                         (["--help", "deploy"], ["Deploy the project", "--plan", "--rolling"]),
                         (["--help", "provision"], ["Make fresh servers ready for deploy", "--plan"])):
        res = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True,
                             timeout=120)
        out, modules_line = res.stdout.rsplit("MODULES=", 1)
        for word in wanted:
            assert word in out, (args, out)
        added = json.loads(modules_line)
        assert "fabdeploy.tasks" in added
        assert lazy_ones(added) == [], args


def test_the_garbage_collector_is_frozen_when_a_fab_process_ends():
    """quick_exit: after the atexit handlers, every object is out of the collector's reach (gc.freeze), so
    the interpreter's last collections walk nothing. The probe's handler is registered before fabdeploy's,
    so it runs after it (atexit runs handlers last in, first out)."""
    code = ("import atexit, gc, sys\n"
            "atexit.register(lambda: print('frozen at exit:', gc.get_freeze_count()))\n"
            "import fabdeploy.tasks\nprint('frozen before exit:', gc.get_freeze_count())")
    res = run_python(code)
    assert res.returncode == 0, res.stderr
    before, at_exit = (int(line.rsplit(" ", 1)[1]) for line in res.stdout.splitlines())
    assert before == 0
    assert at_exit > 1000
