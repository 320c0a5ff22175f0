"""The django phase's Django boots and collectstatic skipped when nothing static changed, end to end (real fab,
one real lab host, two sample projects on it; tests in order, building on each other).

Both use ManifestStaticFilesStorage. "sample" runs as its own app user (not the SSH user "deploy"): a first deploy
boots Django twice, once as the app user (import check, migrate) and once as the deploy user (collectstatic,
check --deploy); a redeploy once as the app user unless the static inputs changed (then the deploy user
collects after it); the app user reads staticfiles.json in the public static root. "mani" runs as the SSH
user ([app] user = "deploy"): one boot. Boots are counted by a logging
wrapper put in place of each release virtualenv's python. A code-only redeploy skips collectstatic and the
site serves its CSS from the reused static root; a changed CSS file is collected and served; a rollback
serves the previous release's CSS again.
"""
from __future__ import annotations

import http.client
import re
from types import SimpleNamespace

import pytest

from e2e_site import deploy, fab, new_site

SKIPPED = "collectstatic: skipped (static files unchanged)"
MANIFEST = ('\nSTORAGES = {"default": {"BACKEND": "django.core.files.storage.FileSystemStorage"}, "staticfiles": '
            '{"BACKEND": "django.contrib.staticfiles.storage.ManifestStaticFilesStorage"}}\n')
CSS = "pages/static/pages/site.css"


@pytest.fixture(scope="module")
def lab(make_host, tmp_path_factory, wheel_cache):
    host = make_host("boot1")
    sample = new_site(host, tmp_path_factory, wheel_cache, "boot-sample")
    mani = new_site(host, tmp_path_factory, wheel_cache, "boot-mani", '[app]\nuser = "deploy"\n', name="mani",
                    port=8081)
    for site in (sample, mani):
        settings = site.proj.src / "sampleproject" / "settings.py"
        site.proj.commit("manifest storage", {"sampleproject/settings.py": settings.read_text() + MANIFEST})
    return SimpleNamespace(host=host, sample=sample, mani=mani, css={})


def get(site, path: str) -> bytes:
    conn = http.client.HTTPConnection(site.host.address, site.port, timeout=10)
    conn.request("GET", path, headers={"Host": site.host.address})
    resp = conn.getresponse()
    body = resp.read()
    assert resp.status == 200, (path, resp.status, body[-300:])
    return body


def served_css(site) -> tuple[str, bytes]:
    """The stylesheet the page links to and what nginx serves there."""
    url = re.search(rb'<link rel="stylesheet" href="([^"]+)"', get(site, "/")).group(1).decode()
    return url, get(site, url)


def redeploy(site, label: str, files: dict[str, str]) -> str:
    site.proj.commit(label, files)
    return deploy(site)[1]


def log_boots(site) -> str:
    """From now on each start of the site's virtualenv python is logged (the user): the log's path."""
    bin_dir = f"{site.d}/venvs/" + site.host.exec(["cat", f"{site.d}/current/.fabdeploy/venv"]).stdout.strip() + "/bin"
    log = f"/tmp/boots-{site.name}/log"  # (the lab host's own /tmp; a directory without the sticky bit)
    site.host.exec(f"mv {bin_dir}/python {bin_dir}/python.real && printf '%s\\n' '#!/bin/sh' "
                   f"'echo \"$(id -un) $1\" >> {log}' 'exec \"$(dirname \"$0\")/python.real\" \"$@\"' "
                   f"> {bin_dir}/python && chmod 755 {bin_dir}/python && mkdir -m 777 /tmp/boots-{site.name} "
                   f"&& : > {log} && chmod 666 {log}")
    return log


def test_first_deploys_collect(lab):
    for site in (lab.sample, lab.mani):
        out = deploy(site)[1]
        assert re.search(r"django .*static files copied", out) and SKIPPED not in out, out
        lab.css[site.name] = [served_css(site)]
        site.log = log_boots(site)
    for site in (lab.sample, lab.mani):  # (the hashed names: the app read staticfiles.json)
        assert re.fullmatch(r"/static/pages/site\.[0-9a-f]{12}\.css", lab.css[site.name][0][0])
    # the static root is public (2755, files o+r): the app user of its own reads the manifest there
    modes = lab.host.exec(f"stat -c %a {lab.sample.d}/shared/static && readlink -f {lab.sample.d}/shared/static/current"
                          " | xargs -I@ stat -c %a @/staticfiles.json").stdout.split()
    assert modes == ["2755", "644"], modes
    assert all(b"fabdeploy-sample-css" in css[0][1] for css in lab.css.values())


def test_a_code_only_redeploy_as_two_users_boots_twice_and_skips_collectstatic(lab):
    site = lab.sample
    out = redeploy(site, "python only", {"pages/views.py": (site.proj.src / "pages/views.py").read_text() + "\n#\n"})
    assert re.search(rf"django +0 migrations applied; {re.escape(SKIPPED)}", out) and "copied" not in out, out
    # one python process in the whole deploy: the app user's (import, migrate, the static inputs compared,
    # check --deploy); the deploy user's collectstatic boot is not needed
    assert site.host.exec(["cat", site.log]).stdout.splitlines() == ["sample -c"]
    assert served_css(site) == lab.css["sample"][0]
    # the new master was started by the shell once the app user's boot (migrate) was done
    assert re.search(r"restart +uwsgi started early beside \d+, swapped", out), out


def test_a_code_only_redeploy_as_one_user_boots_once_and_serves_the_manifest_css(lab):
    site = lab.mani
    out = redeploy(site, "python only", {"pages/views.py": (site.proj.src / "pages/views.py").read_text() + "\n#\n"})
    assert re.search(rf"django +0 migrations applied; {re.escape(SKIPPED)}", out) and "copied" not in out, out
    assert site.host.exec(["cat", site.log]).stdout.splitlines() == ["deploy -c"]
    assert served_css(site) == lab.css["mani"][0]  # the hashed name, through the reused staticfiles.json
    # the one boot started the new master itself after migrate (no other python ran: the log above), and
    # with the environment the restart would give it: not the phase's settings module nor the env file's
    assert re.search(r"restart +uwsgi started early beside \d+, swapped", out), out
    pid = site.host.exec(["cat", f"{site.d}/shared/run/uwsgi.pid"]).stdout.strip()
    environ = site.host.exec(["cat", f"/proc/{pid}/environ"]).stdout.split("\0")
    assert not [v for v in environ if v.startswith(("DJANGO_SETTINGS_MODULE=", "FABDEPLOY_ENV_NAMES="))], environ


def test_a_changed_css_file_is_collected_and_served(lab):
    site = lab.sample
    css = (site.proj.src / CSS).read_text() + "\n/* changed-css-marker */\n"
    boots = len(lab.host.path(site.log).read_text().splitlines())
    out = redeploy(site, "css", {CSS: css})
    assert re.search(r"django .*1 static file copied", out) and SKIPPED not in out, out
    # the app user's boot found the static inputs changed, then the deploy user's boot collected
    assert lab.host.path(site.log).read_text().splitlines()[boots:] == ["sample -c", "deploy -c"]
    url, body = served_css(site)
    assert url != lab.css["sample"][0][0] and re.fullmatch(r"/static/pages/site\.[0-9a-f]{12}\.css", url)
    assert body == css.encode()


def test_rollback_serves_the_previous_releases_css(lab):
    boots = lab.host.path(lab.sample.log).read_text()
    res = fab(lab.sample, "rollback")
    assert res.returncode == 0, res.stdout + res.stderr
    assert served_css(lab.sample) == lab.css["sample"][0]
    # the migration check came from the records (steps/migration_record.py): no python started
    assert lab.host.path(lab.sample.log).read_text() == boots
