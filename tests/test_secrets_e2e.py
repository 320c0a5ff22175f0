"""Secrets never printed (issue 11.5), end to end on one lab host: [django] env values whatever their names
(a DATABASE_URL with user:password, an innocuously named variable), pip.index_url userinfo, a failing hook
that echoes secrets to stderr, --verbose, and --plan after a secret changed. The whole output of every run is
searched for every secret value, and so is the host's audit log.

The tests run in order against one host and build on each other.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from conftest import make_project, release_of, run_fab, sample_config

DB_URL = "postgres://appuser:Pg-S3cret-pw81@db.internal:5432/app"
COLOR = "zq81-innocuous-name-secret"
TOKEN = "tok-7c1f0e2d9b"
# wheelhouse mode: the index is only used by the local `pip wheel`, and the tests run it with PIP_NO_INDEX=1
INDEX = "https://ci-bot:Idx-T0ken-4417@mirror.invalid/simple"
NEW_DB_URL = "postgres://appuser:Pg-N3w-pw-2290@db.internal:5432/app"
NEW_COLOR = "zq81-second-secret-value"
SECRETS = ["Pg-S3cret-pw81", "appuser:Pg", COLOR, TOKEN, "Idx-T0ken-4417", "ci-bot", "Pg-N3w-pw-2290", NEW_COLOR]
MASK = "********"


def config(host, db_url=DB_URL, color=COLOR, hook="", wheelhouse=True) -> str:
    text = sample_config(host, name="secrets", deploy_to="/srv/secrets", extra=f"""\
        [django]
        env = {{ DATABASE_URL = "{db_url}", COLOR = "{color}", API_TOKEN = "{TOKEN}", DEBUG_LEVEL = "1" }}
        """ + (f"[hooks]\nafter_django = [{hook!r}]\n" if hook else ""))
    return text.replace("wheelhouse = true", f'wheelhouse = {str(wheelhouse).lower()}\nindex_url = "{INDEX}"')


@pytest.fixture(scope="module")
def site(make_host, tmp_path_factory, wheel_cache):
    host = make_host("secrets")
    proj = make_project(tmp_path_factory.mktemp("proj"))
    proj.write_config(config(host))
    return SimpleNamespace(host=host, proj=proj, cache=wheel_cache)


def fab(site, *args):
    res = run_fab(site.proj.root, "deploy", *args, cache=site.cache)
    return res, res.stdout + res.stderr


def assert_no_secret(text: str) -> None:
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, f"secrets {leaked} printed:\n{text}"


def audit_log(site) -> str:
    return site.host.path("/srv/secrets/shared/log/audit.jsonl").read_text()


def test_verbose_deploy_prints_no_secret(site):
    res, out = fab(site, "--verbose")
    assert res.returncode == 0, out
    assert "env = DATABASE_URL=" + MASK in out and "COLOR=" + MASK in out  # the uWSGI ini and app.env, shown
    assert "DEBUG_LEVEL=1" in out  # values under 4 characters are not masked
    assert_no_secret(out)
    release_of(res.stdout)
    ini = site.host.path("/srv/secrets/shared/config/uwsgi.ini").read_text()
    assert f"env = DATABASE_URL={DB_URL}" in ini and f"env = COLOR={COLOR}" in ini  # the host has them


def test_a_failing_hook_echoing_secrets_prints_none_and_audits_none(site):
    hook = 'echo "hook-ran token=$API_TOKEN db=$DATABASE_URL color=$COLOR" >&2; exit 3'
    site.proj.write_config(config(site.host, hook=hook))
    site.proj.commit("B", {"pages/message.txt": "B\n"})
    for args in ((), ("--verbose",)):
        res, out = fab(site, *args)
        assert res.returncode == 1, out
        assert f"hook-ran token={MASK} db={MASK} color={MASK}" in out, out  # the remote stderr tail, masked
        assert "django   FAILED:" in out and "Traceback" not in out
        assert_no_secret(out)
    log = audit_log(site)
    assert '"result": "failed"' in log
    assert_no_secret(log)


def test_plan_after_secrets_changed_says_changed_without_values(site):
    # wheelhouse = false: the hosts' pip would use the index, so its URL is in the plan's venv script
    site.proj.write_config(config(site.host, db_url=NEW_DB_URL, color=NEW_COLOR, wheelhouse=False))
    res, out = fab(site, "--plan")
    assert res.returncode == 0, out
    assert f"--index-url https://{MASK}@mirror.invalid/simple" in out
    for name in ("DATABASE_URL", "COLOR"):
        assert f"-env = {name}={MASK}\n" in out and f"+env = {name}={MASK} (changed)\n" in out, out
        assert f"-{name}={MASK}\n" in out and f"+{name}={MASK} (changed)\n" in out, out  # app.env
    assert f" env = API_TOKEN={MASK}\n" in out or f"env = API_TOKEN={MASK}" in out
    assert_no_secret(out)
