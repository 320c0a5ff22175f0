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
        "fabdeploy.ops.dbtasks", "fabdeploy.ops.sudoers", "fabdeploy.front.acme", "fabdeploy.ops.plan",
        "fabdeploy.ops.rollback", "fabdeploy.ops.logs", "fabdeploy.ops.report", "fabdeploy.ops.report_text",
        "fabdeploy.ops.secrets")


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


# The "already live" fingerprint without jinja2 (local/render.py digests, steps/live_check.py)

FINGERPRINT = """
import json, sys
from fabdeploy.config import parse_config
from fabdeploy.steps import live_check
raw = {"project": {"name": "shop", "django_settings": "shop.settings", "wsgi": "shop.wsgi:application"},
       "paths": {"deploy_to": "/srv/shop"}, "cache": {"redis": True}, "django": {"env": {"A": "1"}}}
raw.update(json.loads(sys.argv[1]))
fp = live_check.fingerprint(parse_config(raw), "a" * 40, b"Django\\n")
print(json.dumps({"fp": fp, "jinja2": "jinja2" in sys.modules}))
"""


def fingerprint_in_a_process(extra: dict, seed: str = "0") -> dict:
    res = subprocess.run([sys.executable, "-c", FINGERPRINT, json.dumps(extra)], cwd=REPO, capture_output=True,
                         text=True, timeout=120, env={**__import__("os").environ, "PYTHONHASHSEED": seed})
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_the_fingerprint_needs_no_jinja2_and_is_the_same_in_every_process():
    """No template is rendered for the fingerprint (jinja2 not even imported), and two processes with other
    hash seeds (set and dict orders) agree on it: a no-op redeploy is still recognised as one."""
    one, two = fingerprint_in_a_process({}, "1"), fingerprint_in_a_process({}, "2")
    assert one["jinja2"] is False
    assert one["fp"] == two["fp"]
    # a value only a template sees (the nginx site's client_max_body_size; the settings' cache section)
    assert fingerprint_in_a_process({"nginx": {"client_max_body_size": "99m"}})["fp"] != one["fp"]
    assert fingerprint_in_a_process({"cache": {"redis": True, "sessions": True}})["fp"] != one["fp"]


def test_digest_mode_covers_the_template_text_and_renders_what_it_cannot_spell(tmp_path, monkeypatch):
    from fabdeploy.local import render
    (tmp_path / "t.j2").write_text("{{ a }}\n")
    monkeypatch.setattr(render, "TEMPLATE_DIRS", [tmp_path])
    render._templates_digest.cache_clear()
    render._shared.cache_clear()
    try:
        with render.digests():
            first = render.render("t.j2", a=[1, 2])
            assert first != render.render("t.j2", a=(1, 2))  # a tuple renders as (1, 2): another text
            (tmp_path / "t.j2").write_text("{{ a }}!\n")
            render._templates_digest.cache_clear()
            assert render.render("t.j2", a=[1, 2]) != first  # the template changed
            assert render.render("t.j2", a=object.__new__(type("Opaque", (), {"__repr__": lambda s: "O"}))) == "O!\n"
        assert render.render("t.j2", a=[1, 2]) == "[1, 2]!\n"  # outside the block: rendered
    finally:
        render._templates_digest.cache_clear()
        render._shared.cache_clear()
