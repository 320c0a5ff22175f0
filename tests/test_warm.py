"""Warm workers (fabfile/appserver/warm.py): where the warm-up module is written and hooked in, and what its
GET is (run here with a real Django, in a subprocess). The e2e proof (every new worker's first answer is its
own warm-up) is in test_beside_e2e.py (uWSGI) and test_gunicorn_e2e.py."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from fabdeploy.appserver import warm
from fabdeploy.appserver.gunicorn import Gunicorn
from fabdeploy.appserver.uwsgi import UWSGI
from fabdeploy.steps import live_check
from fabdeploy.steps.code import code
from test_appserver import gunicorn_cfg
from test_phases import make_cfg, make_rel, written


def _python(tmp_path, program: str) -> subprocess.CompletedProcess:
    """Run `program` in a Python of its own in tmp_path (fabdeploy_warm.py and wsettings.py there)."""
    return subprocess.run([sys.executable, "-c", program], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={"DJANGO_SETTINGS_MODULE": "wsettings", "PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})


def test_applies_to_uwsgi_and_wsgi_gunicorn_unless_switched_off():
    assert warm.applies(make_cfg()) and warm.applies(gunicorn_cfg())
    assert not warm.applies(make_cfg(app={"warm_workers": False}))
    assert not warm.applies(make_cfg(app={"server": "gunicorn", "asgi": "shop.asgi:application"}))
    assert not warm.applies(make_cfg(app={"server": "uvicorn", "asgi": "shop.asgi:application"}))


def test_the_uwsgi_ini_imports_the_module_and_the_code_phase_writes_it():
    cfg, rel = make_cfg(health={"path": "/healthz"}), make_rel()
    ini = UWSGI().render_config(cfg, rel).splitlines()
    assert "import = fabdeploy_warm" in ini and ini.index("import = fabdeploy_warm") < ini.index("master = true")
    assert "skip-atexit-teardown = true" in ini  # (with the module: its uwsgi.atexit does what an app needs of it)
    module = warm.module_text(cfg)
    assert written(code(cfg, rel).lines, f"/srv/shop/releases/{rel.id}/fabdeploy_warm.py") == module
    assert "PATH = '/healthz'" in module
    ast.parse(module)
    assert "@uwsgidecorators.postfork" in module and "WSGI = 'shop.wsgi:application'" in module


def test_gunicorn_calls_it_from_when_ready_and_post_worker_init_and_its_module_has_no_uwsgi_part():
    cfg, rel = gunicorn_cfg(), make_rel()
    conf = Gunicorn().render_config(cfg, rel)
    ast.parse(conf)
    assert "def post_worker_init(worker):" in conf and "fabdeploy_warm.warm(worker.wsgi)" in conf
    assert "def when_ready(server):" in conf and "fabdeploy_warm.warm_master(server.app.wsgi())" in conf
    module = warm.module_text(cfg)
    ast.parse(module)
    assert "uwsgi" not in module.lower()


def test_off_means_no_module_no_import_no_hook():
    for cfg in (make_cfg(app={"warm_workers": False}), make_cfg(app={"server": "gunicorn", "warm_workers": False})):
        rel = make_rel()
        assert "fabdeploy_warm" not in "\n".join(code(cfg, rel).lines)
        from fabdeploy import appserver
        assert "fabdeploy_warm" not in appserver.of(cfg).render_config(cfg, rel)
        assert "skip-atexit" not in appserver.of(cfg).render_config(cfg, rel)


def test_switching_it_makes_the_next_deploy_a_real_one():
    on, off = make_cfg(), make_cfg(app={"warm_workers": False})
    assert live_check.fingerprint(on, "r" * 40, b"django\n") != live_check.fingerprint(off, "r" * 40, b"django\n")
    other_path = make_cfg(health={"path": "/up"})
    assert live_check.fingerprint(on, "r" * 40, b"django\n") != live_check.fingerprint(other_path, "r" * 40, b"django\n")


def test_the_get_reaches_the_view_with_a_host_django_accepts_and_closes_the_response(tmp_path):
    """The gunicorn module (warm(app)) run by a real Django: the GET goes through the WSGI handler with the
    first plain ALLOWED_HOSTS name, https when SECURE_SSL_REDIRECT (so the view answers, not the redirect), the
    path decoded and the query kept; the response is closed (request_finished fired)."""
    cfg = gunicorn_cfg(health={"path": "/a%20b/?x=1"})
    (tmp_path / "fabdeploy_warm.py").write_text(warm.module_text(cfg))
    (tmp_path / ".fabdeploy").mkdir()
    (tmp_path / ".fabdeploy" / "django-done").touch()  # (a complete release: warm() waits for its GET)
    (tmp_path / "wsettings.py").write_text(textwrap.dedent("""\
        SECRET_KEY = "k" * 50
        DEBUG = False
        ALLOWED_HOSTS = [".wild.test", "*.x", "site.test", "other.test"]
        SECURE_SSL_REDIRECT = True
        ROOT_URLCONF = "wurls"
        INSTALLED_APPS = []
        DATABASES = {}
        """))
    (tmp_path / "wurls.py").write_text(textwrap.dedent("""\
        import json
        from django.http import HttpResponse
        from django.urls import path
        SEEN = []
        def view(request):
            SEEN.append({"host": request.get_host(), "secure": request.is_secure(), "path": request.path,
                         "x": request.GET.get("x"), "agent": request.META["HTTP_USER_AGENT"]})
            return HttpResponse("ok")
        urlpatterns = [path("a b/", view)]
        """))
    program = textwrap.dedent("""\
        import json, django
        from django.core.signals import request_finished
        from django.core.wsgi import get_wsgi_application
        finished = []
        request_finished.connect(lambda **kw: finished.append(1), weak=False)
        import fabdeploy_warm, wurls
        fabdeploy_warm.warm(get_wsgi_application())
        print(json.dumps({"seen": wurls.SEEN, "finished": len(finished)}))
        """)
    res = _python(tmp_path, program)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out == {"seen": [{"host": "site.test", "secure": True, "path": "/a b/", "x": "1",
                             "agent": "fabdeploy-warm"}], "finished": 1}, (out, res.stderr)


def test_an_exception_is_one_line_on_stderr_and_the_worker_goes_on(tmp_path):
    cfg = gunicorn_cfg()
    (tmp_path / "fabdeploy_warm.py").write_text(warm.module_text(cfg))
    (tmp_path / ".fabdeploy").mkdir()
    (tmp_path / ".fabdeploy" / "django-done").touch()  # (a complete release: warm() waits for its GET)
    (tmp_path / "wsettings.py").write_text('SECRET_KEY = "k" * 50\nALLOWED_HOSTS = []\n')
    program = ("import fabdeploy_warm\n"
               "def app(environ, start_response):\n    raise ValueError('broken app')\n"
               "fabdeploy_warm.warm(app)\nprint('served on')\n")
    res = _python(tmp_path, program)
    assert res.returncode == 0 and res.stdout == "served on\n", res
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fabdeploy: warming worker ") and "GET / failed: ValueError('broken app')" in lines[0], lines


def test_the_django_phase_ends_by_marking_the_release_complete():
    from fabdeploy.steps.django_app import django
    for cfg in (make_cfg(), make_cfg(django={"migrate": False})):
        lines = django(cfg, make_rel()).lines
        assert lines[-1] == f": > /srv/shop/releases/{make_rel().id}/.fabdeploy/django-done"
    assert "django-done" not in "\n".join(django(make_cfg(app={"warm_workers": False}), make_rel()).lines)


def test_a_master_started_before_the_release_is_complete_warms_up_once_it_is(tmp_path):
    """No DONE yet (a master started early): warm() returns at once, its thread GETs once DONE appears;
    with DONE there it waits for the GET."""
    (tmp_path / "fabdeploy_warm.py").write_text(warm.module_text(gunicorn_cfg()))
    (tmp_path / "wsettings.py").write_text('SECRET_KEY = "k" * 50\nALLOWED_HOSTS = ["a.test"]\nDATABASES = {}\n')
    program = textwrap.dedent("""\
        import os, sys, time
        import fabdeploy_warm
        got = []
        def app(environ, start_response):
            got.append(time.monotonic())
            start_response("200 OK", [])
            return [b"ok"]
        t0 = time.monotonic()
        fabdeploy_warm.warm(app)
        print("returned", len(got), flush=True)
        time.sleep(0.3)
        print("still", len(got), flush=True)
        os.makedirs(".fabdeploy"); open(".fabdeploy/django-done", "w").close()
        time.sleep(0.5)
        print("then", len(got), flush=True)
        fabdeploy_warm.warm(app)
        print("complete", len(got), flush=True)
        """)
    res = _python(tmp_path, program)
    assert res.returncode == 0 and res.stdout.split("\n") == ["returned 0", "still 0", "then 1", "complete 2", ""], res


UWSGI_BIN = Path(sys.executable).parent / "uwsgi"


def _uwsgi_release(tmp_path, app_text: str, done: bool):
    """A release-like directory for a real uWSGI here: fabdeploy_warm.py (wsgi wapp:application, health.path
    /w), the settings, the app module; DONE there when `done`."""
    cfg = make_cfg(project={"wsgi": "wapp:application"}, health={"path": "/w"})
    (tmp_path / "fabdeploy_warm.py").write_text(warm.module_text(cfg))
    (tmp_path / ".fabdeploy").mkdir()
    if done:
        (tmp_path / ".fabdeploy" / "django-done").touch()
    (tmp_path / "wsettings.py").write_text('SECRET_KEY = "k" * 50\nALLOWED_HOSTS = ["a.test"]\nDATABASES = {}\n')
    (tmp_path / "wapp.py").write_text(textwrap.dedent(app_text))
    return tmp_path


def _start_uwsgi(rel, extra: str = "") -> subprocess.Popen:
    ini = textwrap.dedent(f"""\
        [uwsgi]
        chdir = {rel}
        pythonpath = {rel}
        module = wapp:application
        env = DJANGO_SETTINGS_MODULE=wsettings
        import = fabdeploy_warm
        master = true
        need-app = true
        processes = 2
        threads = 2
        enable-threads = true
        http-socket = {rel}/http.sock
        die-on-term = true
        """) + extra
    (rel / "uwsgi.ini").write_text(ini)
    return subprocess.Popen([str(UWSGI_BIN), "--ini", str(rel / "uwsgi.ini")], stdout=open(rel / "out", "wb"),
                            stderr=subprocess.STDOUT, cwd=rel, env={"PATH": "/usr/bin:/bin", "WLOG": str(rel / "log")})


def _until(check, seconds=20.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def _get_unix(path: str) -> str:
    import http.client
    import socket

    class Conn(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(10)
            self.sock.connect(path)
    c = Conn("a.test", timeout=10)
    c.request("GET", "/", headers={"Host": "a.test", "User-Agent": "visitor"})
    return c.getresponse().read().decode()


WAPP = """\
    import os
    from django.core.wsgi import get_wsgi_application
    django_app = get_wsgi_application()
    FIRST = []  # the pid of the process that first ran application() in this memory (a fork inherits it)

    def application(environ, start_response):
        FIRST.append(FIRST[0] if FIRST else os.getpid())
        import fabdeploy_warm
        with open(os.environ["WLOG"], "a") as f:
            f.write(f"{os.getpid()} {environ['HTTP_USER_AGENT']} {FIRST[0]} {fabdeploy_warm.WARMED}\\n")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
    """


def test_a_real_uwsgi_master_answers_the_get_once_before_it_forks_and_its_workers_inherit_it(tmp_path):
    """A real uWSGI (the venv's) with the ini's `import`: a master started before DONE loads the app and waits
    (no worker, no GET); once DONE appears the master (its own pid) answers the GET, then forks; a worker's
    first request finds what the master's GET ran (FIRST: the master's pid) and WARMED set."""
    rel = _uwsgi_release(tmp_path, WAPP, done=False)
    proc = _start_uwsgi(rel)
    try:
        out = rel / "out"
        assert _until(lambda: b"Python main interpreter initialized" in out.read_bytes()), out.read_text()
        time.sleep(1)  # (the app loads, then the master waits for DONE)
        assert proc.poll() is None and b"spawned uWSGI worker" not in out.read_bytes(), out.read_text()
        assert not (rel / "log").exists()
        (rel / ".fabdeploy" / "django-done").touch()
        assert _until(lambda: out.read_bytes().count(b"spawned uWSGI worker") == 2), out.read_text()
        assert (rel / "log").read_text() == f"{proc.pid} fabdeploy-warm {proc.pid} False\n"
        assert _get_unix(str(rel / "http.sock")) == "ok"
        lines = (rel / "log").read_text().splitlines()
        worker, agent, first, warmed = lines[1].split()
        assert int(worker) != proc.pid and (agent, first, warmed) == ("visitor", str(proc.pid), "True"), lines
        assert "fabdeploy" not in out.read_text()  # (nothing failed)
    finally:
        proc.terminate()
        proc.wait(20)


def test_the_wsgi_modules_own_error_is_what_uwsgi_reports(tmp_path):
    """The import hook leaves a broken WSGI module's error to uWSGI: its traceback names the real error and no
    other, and the master exits (need-app); nothing was warmed."""
    rel = _uwsgi_release(tmp_path, "raise ValueError('broken wsgi module')\n", done=True)
    proc = _start_uwsgi(rel)
    try:
        assert proc.wait(30) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
    out = (rel / "out").read_text()
    assert "ValueError: broken wsgi module" in out and out.count("Traceback") == 1, out
    assert "fabdeploy: warming" not in out and not (rel / "log").exists()


def test_a_master_waits_for_done_then_answers_once_and_its_forks_skip_theirs(tmp_path):
    """warm_master (gunicorn's when_ready): no DONE, it waits (no GET); then one GET, WARMED set, so a process
    forked afterwards (a worker) finds it set and its post_worker_init does not GET again."""
    (tmp_path / "fabdeploy_warm.py").write_text(warm.module_text(gunicorn_cfg()))
    (tmp_path / "wsettings.py").write_text('SECRET_KEY = "k" * 50\nALLOWED_HOSTS = ["a.test"]\nDATABASES = {}\n')
    program = textwrap.dedent("""\
        import os, threading, time
        import fabdeploy_warm
        got = []
        def app(environ, start_response):
            got.append(os.getpid())
            start_response("200 OK", [])
            return [b"ok"]
        t = threading.Thread(target=fabdeploy_warm.warm_master, args=(app,))
        t.start()
        time.sleep(0.4)
        print("waiting", t.is_alive(), len(got), fabdeploy_warm.WARMED, flush=True)
        os.makedirs(".fabdeploy"); open(".fabdeploy/django-done", "w").close()
        t.join(10)
        print("done", t.is_alive(), got == [os.getpid()], fabdeploy_warm.WARMED, flush=True)
        pid = os.fork()
        if pid == 0:
            if not fabdeploy_warm.WARMED:
                fabdeploy_warm.warm(app)
            print("worker", len(got), flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
        """)
    res = _python(tmp_path, program)
    assert res.returncode == 0 and res.stdout.split("\n") == ["waiting True 0 False", "done False True True",
                                                             "worker 1", ""], res


def test_a_master_whose_get_outlasts_the_timeout_says_so_and_forks_only_once_it_ended(tmp_path, monkeypatch):
    """warm_master with a GET slower than TIMEOUT (1 s here): one line on stderr at TIMEOUT, and it returns
    only once the GET has ended (no fork while a thread of it may hold a lock), WARMED set."""
    monkeypatch.setattr(warm, "TIMEOUT", 1)
    (tmp_path / "fabdeploy_warm.py").write_text(warm.module_text(gunicorn_cfg()))
    (tmp_path / ".fabdeploy").mkdir()
    (tmp_path / ".fabdeploy" / "django-done").touch()
    (tmp_path / "wsettings.py").write_text('SECRET_KEY = "k" * 50\nALLOWED_HOSTS = ["a.test"]\nDATABASES = {}\n')
    program = textwrap.dedent("""\
        import sys, time
        import fabdeploy_warm
        def app(environ, start_response):
            time.sleep(2.5)
            start_response("200 OK", [])
            return [b"ok"]
        t0 = time.monotonic()
        fabdeploy_warm.warm_master(app)
        print(round(time.monotonic() - t0), fabdeploy_warm.WARMED, flush=True)
        """)
    res = _python(tmp_path, program)
    assert res.returncode == 0 and res.stdout.split() in (["2", "True"], ["3", "True"]), res
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fabdeploy: warming master ") and \
        "takes more than 1 s; its workers are forked once it ends" in lines[0], lines


EXIT_APP = """\
    import atexit, os, sys
    import uwsgi
    from django.core.wsgi import get_wsgi_application
    application = get_wsgi_application()

    def log(what):
        with open(os.environ["WLOG"], "a") as f:
            f.write(f"{what} {os.getpid()}\\n")

    class Torn:  # (its __del__ runs in the interpreter's teardown, when there is one; the modules it would use
        # may be gone by then: it keeps what it needs)
        def __init__(self):
            self.fd = os.open(os.environ["WLOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            self.write, self.pid = os.write, os.getpid

        def __del__(self):
            self.write(self.fd, b"teardown %d\\n" % self.pid())
    KEEP = Torn()
    atexit.register(log, "atexit")
    uwsgi.atexit = lambda: log("uwsgi")  # (the app's own, set at import: after fabdeploy_warm set its)
    sys.stdout.write("no newline yet")  # (flushed at exit)
    """


def test_uwsgi_processes_exit_without_the_teardown_but_with_what_an_app_needs_of_it(tmp_path):
    """skip-atexit-teardown (rendered with the module): each worker of a real uWSGI that exits gracefully runs
    the app's own uwsgi.atexit, then Python's atexit functions, and flushes stdout; the interpreter's teardown
    (module objects freed: Torn.__del__) does not run. Without the option the same app tears down (what the
    option saves), with the atexit functions run once."""
    graceful = "hook-master-start = unix_signal:15 gracefully_kill_them_all\n"  # (how the deploy retires one)
    for skip in (True, False):
        rel = tmp_path / str(skip)
        rel.mkdir()
        _uwsgi_release(rel, EXIT_APP, done=True)
        proc = _start_uwsgi(rel, graceful + ("skip-atexit-teardown = true\n" if skip else ""))
        try:
            out = rel / "out"
            assert _until(lambda: out.read_bytes().count(b"spawned uWSGI worker") == 2), out.read_text()
        finally:
            proc.terminate()
            proc.wait(20)
        seen: dict[str, list[str]] = {}
        for line in (rel / "log").read_text().splitlines():
            what, pid = line.split()
            seen.setdefault(pid, []).append(what)
        # (the two workers: a master's exit runs no Python exit at all, with or without the option)
        assert len(seen) == 2 and str(proc.pid) not in seen, seen
        want = ["uwsgi", "atexit"] if skip else ["uwsgi", "atexit", "teardown"]
        assert all(whats == want for whats in seen.values()), (skip, seen)
        assert (rel / "out").read_text().count("no newline yet") == 1, (rel / "out").read_text()
