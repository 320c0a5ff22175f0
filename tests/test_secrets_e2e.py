"""Secrets never printed (issue 11.5), end to end on one lab host: [django] env values whatever their names
(a DATABASE_URL with user:password, an innocuously named variable), pip.index_url userinfo, a failing hook
that echoes secrets to stderr, --verbose, and --plan after a secret changed. The whole output of every run is
searched for every secret value, and so is the host's audit log.

The tests run in order against one host and build on each other.
"""
from __future__ import annotations

import re
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
    for name, why in (("API_TOKEN", "its name looks secret"), ("DATABASE_URL", "a URL with a password")):
        assert f"warning: django.env.{name} is a literal value in deploy.toml ({why}): move it to [secrets]" in out
    assert "django.env.COLOR" not in out and "django.env.DEBUG_LEVEL" not in out
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


# ---- [secrets] (issue 17): values from the environment, files, `pass` and a script; never printed ----------

ENV_V, FILE_V, RAW_V, PASS_V, SCRIPT_V = ("env-Zr81q-secret", "file-Kq72w-secret", "raw-Mm09x-secret",
                                         "pass-Tt44h-secret", "script-Bb17y-secret")
KEY_V = "django-key-" + "Yx3" * 16
NEW_FILE_V, NEW_PASS_V, NEW_ENV_V = "file-R0tated-9931", "pass-R0tated-5524", "env-Ch4nged-7716"
OLD_V = "old-Stale-token-4471"
VALUES = [ENV_V, FILE_V, RAW_V, PASS_V, SCRIPT_V, KEY_V, NEW_FILE_V, NEW_PASS_V, NEW_ENV_V, OLD_V]
NAMES = ["ENV_SECRET", "FILE_SECRET", "RAW_SECRET", "PASS_SECRET", "SCRIPT_SECRET", "OLD_TOKEN", "OPTIONAL"]

SEEN_VIEW = f'''\
import hashlib, os, sys
from django.conf import settings
from django.http import JsonResponse


def seen(request):
    """sha256 of each variable the app has (never the value); ?leak=1 prints one to the app log."""
    if request.GET.get("leak"):
        print("leaking FILE_SECRET=" + os.environ.get("FILE_SECRET", ""), file=sys.stderr, flush=True)
    env = {{n: hashlib.sha256(os.environ[n].encode()).hexdigest() for n in {NAMES!r} if n in os.environ}}
    return JsonResponse({{"pid": os.getpid(), "env": env,
                         "secret_key": hashlib.sha256(settings.SECRET_KEY.encode()).hexdigest()}})
'''


def sha(value: str) -> str:
    import hashlib
    return hashlib.sha256(value.encode()).hexdigest()


def secrets_config(host, hook: str = "", hosts: str = "") -> str:
    text = sample_config(host, name="secrets", deploy_to="/srv/secrets", extra="""\
        [django]
        env = { DEBUG_LEVEL = "1" }
        [secrets]
        ENV_SECRET = { env = "FD_ENV_SECRET" }
        FILE_SECRET = { file = ".secrets/production.env" }
        RAW_SECRET = { file = ".secrets/raw-token", format = "raw" }
        PASS_SECRET = { command = ["pass", "show", "shop/db"] }
        SCRIPT_SECRET = { command = ["./get-secret", "api"] }
        OPTIONAL = { env = "FD_UNSET_SECRET", required = false }
        SECRET_KEY = { env = "FD_DJANGO_KEY" }
        """ + (f"[hooks]\nafter_django = [{hook!r}]\n" if hook else ""))
    return text.replace(f'hosts = ["{host.ssh_target()}"]', f'hosts = ["{hosts}"]') if hosts else text


@pytest.fixture(scope="module")
def vault(site, tmp_path_factory):
    """The same host and project, now with [secrets]: a dotenv and a raw file next to deploy.toml, a real
    `pass` store under a throwaway GnuPG key, a plain script, and variables of the deploying environment."""
    import subprocess
    tmp = tmp_path_factory.mktemp("vault")
    gnupg, store = tmp / "gnupg", tmp / "store"
    gnupg.mkdir(mode=0o700)
    env = {"GNUPGHOME": str(gnupg), "PASSWORD_STORE_DIR": str(store), "FD_ENV_SECRET": ENV_V,
           "FD_DJANGO_KEY": KEY_V}
    run_env = {**__import__("os").environ, **env}
    subprocess.run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key", "fabdeploy test <t@example.invalid>",
                    "default", "default", "never"], env=run_env, check=True, capture_output=True)
    listing = subprocess.run(["gpg", "--batch", "--with-colons", "--list-secret-keys"], env=run_env, check=True,
                             capture_output=True, text=True).stdout
    fpr = next(ln.split(":")[9] for ln in listing.splitlines() if ln.startswith("fpr:"))
    subprocess.run(["pass", "init", fpr], env=run_env, check=True, capture_output=True)

    def pass_insert(value: str) -> None:
        subprocess.run(["pass", "insert", "-f", "-e", "shop/db"], input=value + "\n", text=True, env=run_env,
                       check=True, capture_output=True)
    pass_insert(PASS_V)
    root = site.proj.root
    (root / ".secrets").mkdir()
    (root / ".secrets" / "production.env").write_text(f"# production\nFILE_SECRET='{FILE_V}'\n")
    (root / ".secrets" / "raw-token").write_text(RAW_V + "\n")
    script = root / "get-secret"
    script.write_text(f'#!/bin/sh\n[ "$1" = api ] || exit 2\necho {SCRIPT_V}\n')
    script.chmod(0o755)
    urls = (site.proj.src / "pages" / "urls.py").read_text().replace(
        "from . import views", "from . import secretview, views").replace(
        "urlpatterns = [", 'urlpatterns = [\n    path("secrets-seen", secretview.seen),')
    site.proj.commit("secrets view", {"pages/secretview.py": SEEN_VIEW, "pages/urls.py": urls})
    site.proj.write_config(secrets_config(site.host))
    yield SimpleNamespace(site=site, env=env, pass_insert=pass_insert, root=root)
    subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=run_env, capture_output=True)


def task(vault, *args, env=None):
    res = run_fab(vault.root, *args, cache=vault.site.cache, env={**vault.env, **(env or {})})
    out = res.stdout + res.stderr
    leaked = [v for v in VALUES + SECRETS if v in out]
    assert not leaked, f"secret values {leaked} printed by fab {' '.join(args)}:\n{out}"
    return res, out


def seen(host, n: int = 6) -> list[dict]:
    """The view's answers to n requests (both uWSGI workers answer some)."""
    out = []
    for _ in range(n):
        status, _, body = host.http("/secrets-seen", host_header=host.address)
        assert status == 200, body[:500]
        out.append(__import__("json").loads(body))
    return out


def test_secrets_from_env_file_pass_and_a_script_reach_the_app_and_nothing_prints_them(vault):
    host = vault.site.host
    res, out = task(vault, "deploy", "--verbose")
    assert res.returncode == 0, out
    assert "deployed" in out and "secret key: the [secrets] SECRET_KEY goes to" in out
    want = {"ENV_SECRET": sha(ENV_V), "FILE_SECRET": sha(FILE_V), "RAW_SECRET": sha(RAW_V),
            "PASS_SECRET": sha(PASS_V), "SCRIPT_SECRET": sha(SCRIPT_V)}
    for answer in seen(host):
        assert answer["env"] == want and answer["secret_key"] == sha(KEY_V)
    env_file = "/srv/secrets/shared/config/app.env"
    text = host.path(env_file).read_text()
    assert f"PASS_SECRET={PASS_V}" in text and "SECRET_KEY" not in text and "OPTIONAL" not in text
    assert host.exec(f"stat -c %U:%G:%a {env_file}").stdout.strip() == "deploy:secrets:640"  # the app user's group
    assert host.path("/srv/secrets/shared/secret_key").read_text().strip() == KEY_V
    code = "import os, hashlib; print('seen=' + hashlib.sha256(os.environ['PASS_SECRET'].encode()).hexdigest())"
    res, out = task(vault, "manage", "--", "shell", "-c", code)
    assert res.returncode == 0 and f"seen={sha(PASS_V)}" in out, out
    assert_no_secret(audit_log(vault.site))
    assert not [v for v in VALUES if v in audit_log(vault.site)]


def test_rotation_plan_says_changed_then_a_real_deploy_reloads_the_workers(vault):
    host = vault.site.host
    res, out = task(vault, "deploy")
    assert res.returncode == 0 and f"{host.address}: already live" in out, out  # nothing changed: nothing to do
    before = {a["pid"] for a in seen(host)}
    (vault.root / ".secrets" / "production.env").write_text(f"FILE_SECRET='{NEW_FILE_V}'\n")
    vault.pass_insert(NEW_PASS_V)
    res, out = task(vault, "deploy", "--plan")
    assert res.returncode == 0, out
    assert ("--- secrets: ENV_SECRET unchanged, FILE_SECRET changed, OPTIONAL unset (optional), PASS_SECRET "
            "changed, RAW_SECRET unchanged, SCRIPT_SECRET unchanged, SECRET_KEY shared/secret_key") in out, out
    assert f"+FILE_SECRET={MASK} (changed)" in out
    res, out = task(vault, "deploy", "--verbose")
    assert res.returncode == 0 and f"{host.address}: deployed" in out, out  # not "already live"
    answers = seen(host)
    assert all(a["env"]["FILE_SECRET"] == sha(NEW_FILE_V) and a["env"]["PASS_SECRET"] == sha(NEW_PASS_V)
               for a in answers)
    assert not before & {a["pid"] for a in answers}  # every worker is a new one


def test_a_failing_hook_echoing_secrets_prints_none(vault):
    hook = 'echo "hook-ran file=$FILE_SECRET pass=$PASS_SECRET" >&2; exit 3'
    vault.site.proj.write_config(secrets_config(vault.site.host, hook=hook))
    for args in ((), ("--verbose",)):
        res, out = task(vault, "deploy", *args)
        assert res.returncode == 1 and f"hook-ran file={MASK} pass={MASK}" in out, out
        assert "Traceback" not in out
    assert not [v for v in VALUES if v in audit_log(vault.site)]
    vault.site.proj.write_config(secrets_config(vault.site.host))


def test_logs_and_status_mask_a_secret_the_app_logs(vault):
    host = vault.site.host
    host.http("/secrets-seen?leak=1", host_header=host.address)
    res, out = task(vault, "logs", "-n", "200")
    assert f"leaking FILE_SECRET={MASK}" in out, out
    res, out = task(vault, "status")
    assert res.returncode == 0, out


def test_fab_secrets_compares_and_prune_removes_stale_names(vault):
    host = vault.site.host
    res, out = task(vault, "secrets")
    assert res.returncode == 0, out
    for name in ("ENV_SECRET", "FILE_SECRET", "PASS_SECRET", "RAW_SECRET", "SCRIPT_SECRET", "SECRET_KEY",
                 "DEBUG_LEVEL"):
        assert re.search(rf"^{re.escape(host.address)}\s+{name}\s+matches$", out, re.M), out
    # a name the config no longer has, which the running app has too; and a value changed here
    env_file = host.path("/srv/secrets/shared/config/app.env")
    env_file.write_text(env_file.read_text() + f"OLD_TOKEN='{OLD_V}'\n")
    res, out = task(vault, "reload")
    assert res.returncode == 0, out
    assert all(a["env"].get("OLD_TOKEN") == sha(OLD_V) for a in seen(host))
    changed = {"FD_ENV_SECRET": NEW_ENV_V}
    res, out = task(vault, "secrets", env=changed)
    assert res.returncode == 1, out
    assert re.search(r"ENV_SECRET\s+differs$", out, re.M) and re.search(r"OLD_TOKEN\s+not configured$", out, re.M)
    assert "secrets out of step: ENV_SECRET differs, OLD_TOKEN not configured" in out
    res, out = task(vault, "secrets", "--prune")
    assert res.returncode == 0, out
    assert re.search(r"OLD_TOKEN\s+pruned$", out, re.M) and "reloaded:" in out, out
    assert "OLD_TOKEN" not in env_file.read_text()
    assert all("OLD_TOKEN" not in a["env"] for a in seen(host))  # reloaded: the workers lost it
    assert not [v for v in VALUES if v in audit_log(vault.site)]


def test_a_secret_that_cannot_be_had_stops_before_any_ssh(vault):
    """The host list points at an address nothing answers: each failure is the secret's line, not a
    connection error (resolution comes first)."""
    unreachable = "deploy@10.213.255.254"
    vault.site.proj.write_config(secrets_config(vault.site.host, hosts=unreachable))
    cases = [
        ({"FD_ENV_SECRET": ""}, "secrets.ENV_SECRET (env FD_ENV_SECRET): the variable FD_ENV_SECRET is empty"),
        ({"PASSWORD_STORE_DIR": str(vault.root / "no-store")},
         "secrets.PASS_SECRET (command pass show shop/db): the command failed (exit status 1)"),
    ]
    for env, says in cases:
        res, out = task(vault, "deploy", env=env)
        assert res.returncode == 1 and says in out and "Traceback" not in out, out
        assert "10.213.255.254" not in out
    (vault.root / ".secrets" / "production.env").rename(vault.root / ".secrets" / "moved.env")
    try:
        res, out = task(vault, "deploy")
        assert res.returncode == 1 and "secrets.FILE_SECRET (file .secrets/production.env): " in out, out
        assert "production.env does not exist" in out
    finally:
        (vault.root / ".secrets" / "moved.env").rename(vault.root / ".secrets" / "production.env")
        vault.site.proj.write_config(secrets_config(vault.site.host))
