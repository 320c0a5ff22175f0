"""Two app hosts sharing one SQLite database (shared/db on both is a link to one directory outside their
private paths, like a shared mount), no balancer: one module-scoped pair for both items of issue 11.

- 11.2: the first fleet deploy leaves one SECRET_KEY on both hosts (a value signed on one loads on the
  other); hosts whose keys differ are refused in one line naming them, with nothing changed on either;
  `--adopt-secret-key HOST` makes them one (the key never printed, even with --verbose); a host that lost
  its key gets the fleet's; `fab status` names hosts whose keys differ.
- 11.7: slow migrations deployed to both hosts at once are applied once (the hosts take turns under the
  migration lock), and both hosts serve the release.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import make_project, release_of, run_fab, sample_config

FABRIC_YAML = "tasks:\n  executor_class: fabdeploy.executor.FleetExecutor\n"
KEY = "/srv/sample/shared/secret_key"

# A model and two data migrations that each take a while: hosts migrating at the same time would both
# try to apply them (table already exists / database is locked); under the lock the second finds them done.
SLOW = """\
import time
from django.db import migrations


def mark(apps, schema_editor):
    time.sleep(1.5)
    apps.get_model("pages", "Marker").objects.create(name={name!r})


class Migration(migrations.Migration):
    dependencies = [("pages", {previous!r})]
    operations = [migrations.RunPython(mark, migrations.RunPython.noop)]
"""
MARKER = """\
import time
from django.db import migrations, models


def wait(apps, schema_editor):
    time.sleep(1.5)


class Migration(migrations.Migration):
    dependencies = [("pages", "0001_initial")]
    operations = [
        migrations.CreateModel(name="Marker", fields=[
            ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False)),
            ("name", models.CharField(max_length=20)),
        ]),
        migrations.RunPython(wait, migrations.RunPython.noop),
    ]
"""


@pytest.fixture(scope="module")
def pair(make_host, tmp_path_factory, wheel_cache):
    a, b = make_host("fka"), make_host("fkb")
    proj = make_project(tmp_path_factory.mktemp("fleetkey"))
    (proj.root / "fabric.yaml").write_text(FABRIC_YAML)  # fab manage -- ARGS
    db = Path(f"/var/tmp/fabdeploy-fleetkey-db-{os.getpid()}")
    db.mkdir(mode=0o700, exist_ok=True)
    shutil.chown(db, "deploy", "deploy")
    for h in (a, b):
        h.exec("mkdir -p /srv/sample/shared && chown -R deploy:deploy /srv/sample", user="root")
        h.exec(["ln", "-sfn", str(db), "/srv/sample/shared/db"], user="deploy")
    config = sample_config(a).replace(f'hosts = ["{a.ssh_target()}"]\n', "")
    config = config.replace(f'server_name = "{a.address}"', f'server_name = "{a.address} {b.address}"')
    proj.write_config(config + f'[roles]\napp = ["{a.ssh_target()}", "{b.ssh_target()}"]\n')
    yield SimpleNamespace(a=a, b=b, proj=proj, db=db, cache=wheel_cache)
    shutil.rmtree(db, ignore_errors=True)


def deploy(pair, *args):
    return run_fab(pair.proj.root, "deploy", *args, cache=pair.cache)


def manage(pair, host, code: str):
    res = run_fab(pair.proj.root, "manage", "--host", host.ssh_target(), "--", "shell", "-c", code, timeout=120)
    return res


def signed_on(pair, host) -> str:
    res = manage(pair, host, "from django.core import signing; print(signing.dumps('one fleet'))")
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout.strip().splitlines()[-1]


def loads_on(pair, host, token: str):
    return manage(pair, host, f"from django.core import signing; print(signing.loads({token!r}))")


def key(host) -> str:
    return host.path(KEY).read_text()


def state(pair) -> dict:
    """What a refused deploy must not change: each host's key, live release and release directories."""
    return {h.address: (key(h), os.readlink(h.path("/srv/sample/current")),
                        sorted(os.listdir(h.path("/srv/sample/releases")))) for h in (pair.a, pair.b)}


def serves(host, release: str) -> None:
    status, _, body = host.http("/whoami", host_header=host.address)
    assert status == 200, body[:300]
    assert json.loads(body)["release"] == release


def no_secret(res, *keys) -> None:
    for k in keys:
        assert k.strip() not in res.stdout + res.stderr


def test_first_fleet_deploy_one_key_on_both_hosts(pair):
    res = deploy(pair)
    assert res.returncode == 0, res.stdout + res.stderr
    rel = release_of(res.stdout)
    ka, kb = key(pair.a), key(pair.b)
    assert ka == kb and len(ka.strip()) >= 50
    for h in (pair.a, pair.b):
        assert pair.a.path(KEY).stat().st_mode & 0o777 == 0o640
        assert h.path(KEY).stat().st_mode & 0o777 == 0o640
        serves(h, rel)
    assert f"secret key: a new key goes to {pair.a.address}, {pair.b.address}" in res.stdout
    no_secret(res, ka)
    # a value signed with the key on one host (a session, a CSRF token, a reset link) is valid on the other
    token = signed_on(pair, pair.a)
    res = loads_on(pair, pair.b, token)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip().splitlines()[-1] == "one fleet"


def test_slow_migrations_on_a_shared_database_are_applied_once(pair):
    pair.proj.commit("slow migrations", {
        "pages/migrations/0002_marker.py": MARKER,
        "pages/migrations/0003_slow.py": SLOW.format(name="0003", previous="0002_marker"),
        "pages/migrations/0004_slow.py": SLOW.format(name="0004", previous="0003_slow"),
    })
    res = deploy(pair)
    assert res.returncode == 0, res.stdout + res.stderr
    rel = release_of(res.stdout)
    # one host applied the three, the other (waiting for the lock) found nothing left to do
    applied = sorted(int(n) for n in re.findall(r"(\d+) migrations applied", res.stdout))
    assert applied == [0, 3], res.stdout
    with sqlite3.connect(pair.db / "default.sqlite3") as db:
        assert sorted(r[0] for r in db.execute("select name from pages_marker")) == ["0003", "0004"]
        rows = db.execute("select name from django_migrations where app = 'pages'").fetchall()
    assert sorted(r[0] for r in rows) == ["0001_initial", "0002_marker", "0003_slow", "0004_slow"]
    for h in (pair.a, pair.b):
        serves(h, rel)


def test_hosts_with_different_keys_are_refused_and_nothing_changes(pair):
    pair.b.exec(f"umask 077; printf 'another-key-made-by-hand-%s\\n' $$ > {KEY}", user="deploy")
    assert key(pair.a) != key(pair.b)
    # (the check is worth it: B no longer accepts what A signs)
    assert loads_on(pair, pair.b, signed_on(pair, pair.a)).returncode != 0
    before = state(pair)
    pair.proj.commit("C", {"pages/message.txt": "release C\n"})
    res = deploy(pair)
    assert res.returncode == 1, res.stdout + res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("fabdeploy:")]
    assert len(errors) == 1, res.stderr
    assert "the app hosts have different SECRET_KEYs" in errors[0]
    assert pair.a.address in errors[0] and pair.b.address in errors[0]
    assert "fab deploy --adopt-secret-key HOST" in errors[0]
    assert "Traceback" not in res.stderr
    assert state(pair) == before
    no_secret(res, key(pair.a), key(pair.b))
    # fab status says so too, with the same fingerprints
    st = run_fab(pair.proj.root, "status")
    groups = re.search(r"SECRET_KEYs \(shared/secret_key\): (.*?): sessions", errors[0]).group(1)
    assert f"SECRET_KEY DIFFERS between app hosts: {groups} (fab deploy --adopt-secret-key HOST)" in st.stdout, \
        st.stdout + st.stderr


def test_adopt_secret_key_makes_the_fleet_one_again(pair):
    ka, kb = key(pair.a), key(pair.b)
    assert ka != kb
    res = deploy(pair, "--adopt-secret-key", pair.a.address, "--verbose")
    assert res.returncode == 0, res.stdout + res.stderr
    rel = release_of(res.stdout)
    assert key(pair.a) == ka and key(pair.b) == ka
    assert pair.b.path(KEY).stat().st_mode & 0o777 == 0o640
    assert f"secret key: the key of {pair.a.address} goes to {pair.b.address}" in res.stdout
    assert "secret key replaced by the fleet key" in res.stdout
    no_secret(res, ka, kb)  # not even in the --verbose script display
    for h in (pair.a, pair.b):
        serves(h, rel)
    res = loads_on(pair, pair.b, signed_on(pair, pair.a))
    assert res.returncode == 0 and res.stdout.strip().splitlines()[-1] == "one fleet", res.stdout + res.stderr
    st = run_fab(pair.proj.root, "status")
    assert st.returncode == 0 and "SECRET_KEY DIFFERS" not in st.stdout, st.stdout + st.stderr


def test_a_host_without_a_key_gets_the_fleets(pair):
    ka = key(pair.a)
    pair.b.exec(f"rm -f {KEY}", user="deploy")
    pair.proj.commit("D", {"pages/message.txt": "release D\n"})
    res = deploy(pair)
    assert res.returncode == 0, res.stdout + res.stderr
    assert key(pair.a) == ka and key(pair.b) == ka
    assert f"secret key: the key of {pair.a.address} goes to {pair.b.address}" in res.stdout
    no_secret(res, ka)
