"""The benchmark's builders: the generated big project is a real Django project of the promised size (its
migrations match its models, collectstatic post-processes it under ManifestStaticFilesStorage, its pages
render with production-like settings), and the naive script is valid bash doing what bench/naive.py says.
(tests/test_bench_e2e.py runs both against lab hosts.)"""
import subprocess
import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))

import bigproject  # noqa: E402
import naive  # noqa: E402

OVERLAY = """from bigproject.settings import *  # noqa
DEBUG = False
ALLOWED_HOSTS = ["testserver"]
STATIC_ROOT = str(BASE_DIR / "collected")
"""

PAGES = """import django
django.setup()
from django.core.management import call_command
from django.test import Client
call_command("collectstatic", "--noinput", verbosity=0)
c = Client()
for url in ("/", "/health", "/catalog/", "/support/", "/stats"):
    r = c.get(url)
    print(url, r.status_code, "initial" in r.content.decode())
"""


def django(cwd, *args, settings="bigproject.settings"):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={"DJANGO_SETTINGS_MODULE": settings, "PATH": "/usr/bin:/bin"})


def test_big_project_is_of_realistic_size_and_consistent(tmp_path):
    src = bigproject.generate(tmp_path / "big")
    migrations = [p for p in src.glob("*/migrations/0*.py")]
    static = [p for p in src.glob("*/static/**/*") if p.is_file()]
    code = sum(p.stat().st_size for p in src.rglob("*.py"))
    assert len(migrations) >= 40 and len({p.parent.parent.name for p in migrations}) >= 5
    assert len(static) >= 100
    assert code >= 2_000_000
    res = django(src, "manage.py", "makemigrations", "--check", "--dry-run")
    assert res.returncode == 0 and "No changes detected" in res.stdout, res.stdout + res.stderr
    res = django(src, "manage.py", "migrate", "--noinput")
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("Applying ") >= 40 + 18  # its own and Django's
    (src / "overlay.py").write_text(OVERLAY)
    res = django(src, "-c", PAGES, settings="overlay")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[:5] == ["/ 200 True", "/health 200 False", "/catalog/ 200 False",
                                          "/support/ 200 False", "/stats 200 False"]
    manifest = (src / "collected" / "staticfiles.json").read_text()
    assert "catalog/style0.css" in manifest and "core/site.css" in manifest


def test_naive_scripts_are_bash_and_do_what_the_docstring_says():
    for server in ("uwsgi", "gunicorn"):
        deploy = naive.deploy_script("20260101T000000Z-0001", "sampleproject.settings",
                                     "sampleproject.wsgi:application", server, "/wheels")
        rollback = naive.rollback_script(server)
        for text in (deploy, rollback):
            res = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
            assert res.returncode == 0, res.stderr
        for line in ("tar -x -C $R", "--no-index --find-links /wheels", "migrate --noinput",
                     "collectstatic --noinput", "ln -sfn $R $D/current.new && mv -T $D/current.new $D/current",
                     "head -n -5", "from sampleproject.settings import *", "DEBUG = False",
                     'STATIC_ROOT = "/srv/naive/shared/static"'):
            assert line in deploy, (server, line)
        assert "mv -T" in rollback
        # the nginx site is written and reloaded only the first time
        first = deploy.index("if [ ! -e /etc/nginx/sites-enabled/naive ]")
        assert deploy.index("sudo nginx -s reload") > first and deploy.count("nginx -s reload") == 1
    assert '"$V/bin/uwsgi" --reload /srv/naive/shared/run/uwsgi.pid' in naive.deploy_script(
        "x", "s", "w:a", "uwsgi", "/w")
    assert 'kill -HUP "$(cat /srv/naive/shared/run/gunicorn.pid)"' in naive.deploy_script(
        "x", "s", "w:a", "gunicorn", "/w")
