"""A fleet sharing one MariaDB host (issue 14, roles.db, engine = "mysql") end to end: real fab, real lab hosts
(a db host and two app hosts, shared by the module's tests, in order), a real MariaDB.

`fab provision -H <db host>` makes MariaDB listen on the db host's address (a drop-in of its configuration in
the host's private /etc, the server restarted) and creates the user at each app host's address; a second
provision changes nothing. `fab deploy` points both app hosts' DATABASE_URL at the db host, migrates once; a
row written through app A is read through app B. (PostgreSQL, Redis and the firewall: test_db_fleet_e2e.)
"""
from __future__ import annotations

import os
import re
from types import SimpleNamespace

import pytest

import pkglab
from conftest import make_project, run_fab
from test_db_fleet_e2e import fleet_config

D = "/srv/sample"
CNF = "/etc/mysql/mariadb.conf.d/70-fabdeploy.cnf"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture(scope="module")
def fm(make_host, tmp_path_factory, wheel_cache):
    db = make_host("fmdb")
    pkglab.private_apt(db)
    pkglab.assert_private(db)
    a, b = make_host("fma"), make_host("fmb")
    proj = make_project(tmp_path_factory.mktemp("dbfleetmysql"))
    proj.write_config(fleet_config(a, b, db, "mysql"))
    return SimpleNamespace(db=db, a=a, b=b, proj=proj, cache=wheel_cache)


def fab(fm, *args):
    return run_fab(fm.proj.root, *args, cache=fm.cache)


def test_provision_makes_mariadb_listen_on_the_db_address_for_the_app_hosts(fm):
    res = fab(fm, "provision", "-H", fm.db.ssh_target())
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"mysql-access: changed: MariaDB listens on {fm.db.address} ({CNF})" in res.stdout, res.stdout
    assert fm.db.exec(["cat", CNF]).stdout.endswith(f"bind-address = 127.0.0.1,{fm.db.address}\n")
    assert not os.path.exists(CNF)  # (in the lab host's private /etc, not this machine's)
    bind = fm.db.exec(["mariadb", "-N", "-e", "SELECT @@bind_address"]).stdout.strip()
    assert bind == f"127.0.0.1,{fm.db.address}"
    hosts = fm.db.exec(["mariadb", "-N", "-e", "SELECT host FROM mysql.user WHERE user = 'sample' ORDER BY host"])
    assert sorted(hosts.stdout.split()) == sorted(["127.0.0.1", "localhost", fm.a.address, fm.b.address])
    again = fab(fm, "provision", "-H", fm.db.ssh_target())
    assert again.returncode == 0 and not re.search(r": changed: ", again.stdout), again.stdout + again.stderr


def test_the_fleet_deploys_on_mariadb_migrates_once_and_shares_the_rows(fm):
    res = fab(fm, "deploy")
    assert res.returncode == 0, res.stdout + res.stderr
    pw = fm.db.exec(["cat", f"{D}/shared/config/database.password"]).stdout.strip()
    for host in (fm.a, fm.b):
        env = host.exec(["cat", f"{D}/shared/config/app.env"]).stdout
        assert f"DATABASE_URL=mysql://sample:{pw}@{fm.db.address}:3306/sample\n" in env
    assert res.stdout.count("migrations applied") == 1, res.stdout
    assert pw not in res.stdout + res.stderr
    name = fm.a.address
    status, _, body = fm.a.http("/notes/add", host_header=name, method="POST", body=b"text=from-a", headers=FORM)
    assert status == 200 and body.strip() == b"1", body
    status, _, page = fm.b.http("/", host_header=name)
    assert status == 200 and b"Notes: 1" in page, page
    rows = fm.db.exec(["mariadb", "-N", "-D", "sample", "-e", "SELECT text FROM pages_note"]).stdout.split()
    assert rows == ["from-a"]
