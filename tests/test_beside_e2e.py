"""Start beside, swap, keep warm (appserver/beside.py), end to end on one lab host with uWSGI under the
pidfile manager: each deploy starts the new release's master on its own socket, renames it over the socket
nginx uses once every worker runs the release, keeps the replaced master warm (at most one) and stops the one
before; a rollback to the warm master's release is only the rename; a release whose master does not come up
leaves the live master serving untouched; keep_warm = false stops the replaced master once its requests are
served; fab stop stops them all. Deploys and rollbacks run under bounded load: no request may fail, and once
one returns every response names its release.

The tests run in order against one host and build on each other.
"""
from __future__ import annotations

import json
import re
import time

import pytest

from e2e_site import D, children, deploy, fab, new_site, page, seen_lines, sh, workers
from test_load_e2e import Load, broken_deploy_under_load

RUN = f"{D}/shared/run"


@pytest.fixture(scope="module")
def site(make_host, tmp_path_factory, wheel_cache):
    # (health.path /seen: the sample's view that logs "<pid> <User-Agent> <css> <first>" of every request, so the
    # tests see each master's warm-up GET come before anything its workers answered)
    return new_site(make_host("beside"), tmp_path_factory, wheel_cache, "beside", keep=6,
                    extra='[health]\npath = "/seen"\n')


def masters(site) -> dict[str, int]:
    """{slot: pid} of every slot master alive on the host (uwsgi.pid.<slot> naming a live uwsgi)."""
    out = sh(site, f"cd {RUN} && for f in uwsgi.pid.*; do [ -f \"$f\" ] || continue; p=$(cat \"$f\"); "
                   "grep -qsx uwsgi /proc/$p/comm && ! grep -qs '^State:[[:space:]]*Z' /proc/$p/status && "
                   "echo ${f#uwsgi.pid.} $p; done; true")
    return {slot: int(pid) for slot, pid in (ln.split() for ln in out.splitlines())}


def live_pid(site) -> int:
    return int(site.host.path(f"{RUN}/uwsgi.pid").read_text())


def inode(site, path: str) -> str:
    return sh(site, f"stat -c %i {path}")


def under_load(site, *ops):
    """Run each op (a function returning the release it switched to) under load; return the samples, after
    checking that none failed and that once each op returned every response named its release."""
    switches = []
    with Load(site.host.address) as load:
        time.sleep(1)
        for op in ops:
            t0 = time.monotonic()
            expected = op()
            switches.append((t0, time.monotonic(), expected))
            time.sleep(1)
    samples = load.samples
    failed = [s for s in samples if s.status is None or not 200 <= s.status < 300]
    assert len(samples) > 30 and failed == [], failed[:5]
    for (_, returned, expected), nxt in zip(switches, switches[1:] + [(float("inf"), 0, "")]):
        window = [s for s in samples if s.start > returned and s.end < nxt[0]]
        assert window and all(s.release == expected for s in window), (expected, window[:3])
    return samples


def gone_soon(site, pid: int, seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if sh(site, f"grep -qs '^State:[[:space:]]*[A-Y]' /proc/{pid}/status && echo up || echo gone") == "gone":
            return True
        time.sleep(0.2)
    return False


def test_the_first_deploy_starts_a_master_in_its_slot_and_links_the_live_socket(site):
    rel, out = deploy(site)
    assert re.search(rf"restart\s+uwsgi started early \(master \d+, 2 workers on {rel}\)", out), out
    assert masters(site) == {rel: live_pid(site)}
    # the path nginx connects to is a second name of the slot's socket
    assert inode(site, f"{RUN}/uwsgi.sock") == inode(site, f"{RUN}/uwsgi.sock.{rel}")
    assert sh(site, f"stat -c '%F %a' {RUN}/uwsgi.sock") == "socket 660"
    assert sh(site, f"cat {RUN}/uwsgi.sock.live") == rel
    assert f"Release: {rel}" in page(site)


def test_a_deploy_under_load_swaps_to_a_new_master_and_keeps_the_old_one_warm(site):
    first = site.releases[-1]
    old = live_pid(site)

    def deploy_second():
        site.proj.commit("second", {"pages/message.txt": "Second\n"})
        rel, out = deploy(site)
        # (started early: during the django phase, once migrate was done; the restart waited for it and swapped)
        assert re.search(rf"restart\s+uwsgi started early beside {old}, swapped \(master \d+, 2 workers on {rel}\)",
                         out), out
        return rel

    under_load(site, deploy_second)
    second = site.releases[-1]
    new = live_pid(site)
    assert new != old and masters(site) == {first: old, second: new}
    assert workers(site, new) == [f"{D}/releases/{second}"] * 2
    assert workers(site, old) == [f"{D}/releases/{first}"] * 2  # warm: still loaded, idle
    assert inode(site, f"{RUN}/uwsgi.sock") == inode(site, f"{RUN}/uwsgi.sock.{second}")

    # the next deploy: the warm one (first) is stopped, the replaced one (second) becomes the warm one
    site.proj.commit("third", {"pages/message.txt": "Third\n"})
    third, _ = deploy(site)
    assert gone_soon(site, old)
    assert masters(site) == {second: new, third: live_pid(site)}
    assert not site.host.path(f"{RUN}/uwsgi.sock.{first}").exists()
    assert not site.host.path(f"{D}/shared/config/uwsgi.ini.{first}").exists()


def test_every_new_master_answers_the_warm_up_get_before_its_workers_answer_anything(site):
    """[app] warm_workers (default): the master of every release these deploys started GETs health.path in
    process, once, before it forks: every worker's answers show the view had already run in its memory (its
    master's pid), no worker answered a warm-up of its own, and no process ever ran the view cold. A master
    started early (before collectstatic: here the CSS changed) warms up only once the release is complete: its
    GET saw the new release's collected CSS. The check through nginx came after."""
    css = site.proj.src / "pages" / "static" / "pages" / "site.css"
    site.proj.commit("css", {"pages/static/pages/site.css": css.read_text().replace(
        "/* fabdeploy-sample-css */", "/* warm-css-4 */", 1)})
    release, out = deploy(site)
    assert re.search(r"uwsgi started early beside \d+, swapped", out), out
    lines = seen_lines(site)
    slots = masters(site)  # (the live one, the warm one: the one before is retiring, maybe still there)
    live, kept = slots[site.releases[-1]], slots[site.releases[-2]]
    for m in (live, kept):
        mine = [ln for ln in lines if ln[0] == m]
        assert mine and mine[0][1] == "fabdeploy-warm" and mine[0][3] == m, (m, lines)
        ws = children(site, m)
        assert len(ws) == 2 and all(ln[3] == m and ln[1] != "fabdeploy-warm" for ln in lines if ln[0] in ws), \
            (m, ws, lines)
    assert [ln[2] for ln in lines if ln[0] == live][0] == "/*_warm-css-4_*/", lines
    served = [ln for ln in lines if ln[0] in children(site, live)]
    assert served and served[0][1] == "fabdeploy-health", lines  # (a worker's first answer: the check)
    first: dict[int, tuple] = {}
    for ln in lines:
        first.setdefault(ln[0], ln)
    assert all(a == "fabdeploy-warm" if f == p else f != p for p, a, _, f in first.values()), lines
    assert "import = fabdeploy_warm" in site.host.path(f"{D}/shared/config/uwsgi.ini").read_text()
    assert site.host.path(f"{D}/releases/{release}/fabdeploy_warm.py").exists()
    assert "fabdeploy: warming" not in site.host.path(f"{D}/shared/log/uwsgi.log").read_text()


def test_a_rollback_under_load_swaps_back_to_the_warm_master(site):
    second, third = site.releases[-2:]
    warm = masters(site)[second]

    def rollback():
        res = fab(site, "rollback")
        assert res.returncode == 0, res.stdout + res.stderr
        assert re.search(rf"uwsgi swapped to its warm master \(master {warm}, 2 workers on {second}\)",
                         res.stdout), res.stdout
        return second

    under_load(site, rollback)
    # the same process serves again (nothing was started); the release rolled back from is the warm one now
    assert live_pid(site) == warm and masters(site).keys() == {second, third}
    assert f"Release: {second}" in page(site)


def test_a_deploy_that_fails_after_its_master_started_early_stops_that_master(site):
    """The django phase starts the new release's master once migrate is done; a failure after it (here an
    after_django hook, which sees that master running) stops it and removes its slot's files: nothing of the
    failed release keeps running."""
    cfg = site.proj.root / "deploy.toml"
    saved = cfg.read_text()
    before = masters(site)
    hook = (f'p=$(sudo -n -u sample cat {RUN}/uwsgi.pid.$FABDEPLOY_RELEASE) && [ -d /proc/$p ] && '
            'echo "early master $p" >&2; exit 3')
    cfg.write_text(saved + f"[hooks]\nafter_django = [{json.dumps(hook)}]\n")
    try:
        site.proj.commit("early fails", {"pages/message.txt": "Never live\n"})
        res = fab(site, "deploy")
    finally:
        cfg.write_text(saved)
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "Traceback" not in out, out
    early = int(re.search(r"early master (\d+)", out).group(1))
    assert early not in before.values() and gone_soon(site, early, 10)
    assert masters(site) == before
    failed = re.search(r"upload\s+release (\S+)", out).group(1)
    left = sh(site, f"sudo -n -u sample ls {RUN}; ls {D}/shared/config {D}/releases")
    assert failed not in left, left  # (its slot's socket, pidfile and ini copy; the release itself)
    assert f"Release: {site.releases[-2]}" in page(site)


def test_a_release_that_fails_its_health_check_does_not_keep_its_master(site):
    """The new master (started early) comes up and is swapped in, the health check fails, the gate reverts
    to the warm master: the failed release's master is stopped too (nothing reaches it; the release is bad)."""
    live = live_pid(site)
    views = (site.proj.src / "pages" / "views.py").read_text()
    broken = views.replace("def index(request):\n", "def index(request):\n    raise RuntimeError('500')\n", 1)
    broken = broken.replace("def seen(request):\n", "def seen(request):\n    raise RuntimeError('500')\n", 1)
    site.proj.commit("500", {"pages/views.py": broken})  # (the page and health.path /seen)
    res = fab(site, "deploy")
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "-> 500" in out and f"reverted to {site.releases[-2]}" in out, out
    new = int(re.search(r"uwsgi started early beside \d+, swapped \(master (\d+)", out).group(1))
    assert gone_soon(site, new, 10)
    assert live_pid(site) == live and masters(site) == {site.releases[-2]: live}
    assert f"Release: {site.releases[-2]}" in page(site)
    site.proj.commit("no 500", {"pages/views.py": views})


def test_a_release_whose_master_does_not_come_up_leaves_the_live_one_untouched(site):
    served = site.releases[-2]
    live, before = live_pid(site), masters(site)
    wsgi = (site.proj.src / "sampleproject" / "wsgi.py").read_text()
    # (it imports in the deploy's own check; it fails only under uWSGI)
    broken = wsgi + ('\ntry:\n    import uwsgi  # noqa: F401\nexcept ImportError:\n    pass\nelse:\n'
                     '    raise RuntimeError("this release cannot load")\n')
    res, out, samples, failed = broken_deploy_under_load(site, fab, broken)
    assert res.returncode != 0 and "Traceback" not in out, out
    assert f"the live master {live} still serves, untouched" in out and f"reverted to {served}" in out, out
    assert len(samples) > 20 and failed == [], failed[:5]
    assert {s.release for s in samples} == {served}
    assert live_pid(site) == live and masters(site) == before
    site.proj.commit("fixed", {"sampleproject/wsgi.py": wsgi})


def test_keep_warm_false_stops_the_replaced_master_once_its_requests_are_served(site):
    cfg = site.proj.root / "deploy.toml"
    cfg.write_text(cfg.read_text() + "[app]\nkeep_warm = false\n")
    before = masters(site)

    def deploy_cold():
        rel, _ = deploy(site)
        return rel

    under_load(site, deploy_cold)
    rel = site.releases[-1]
    assert all(gone_soon(site, pid) for pid in before.values())
    assert masters(site) == {rel: live_pid(site)}
    log = site.host.path(f"{D}/shared/log/uwsgi.log").read_text()
    assert "graceful shutdown" in log.lower() or "gracefully killing" in log.lower(), log[-2000:]


def test_stop_stops_every_master_and_start_starts_one_again(site):
    res = fab(site, "deploy")  # (keep_warm = false: one master; back to two with the default)
    cfg = site.proj.root / "deploy.toml"
    cfg.write_text(cfg.read_text().replace("keep_warm = false", "keep_warm = true"))
    site.proj.commit("again", {"pages/message.txt": "Again\n"})
    deploy(site)
    pids = masters(site).values()
    assert len(pids) == 2
    res = fab(site, "stop")
    assert res.returncode == 0 and "uwsgi stopped" in res.stdout, res.stdout + res.stderr
    assert all(gone_soon(site, pid, 5) for pid in pids)
    assert sh(site, f"ls {RUN} | grep uwsgi; true") == ""
    res = fab(site, "start")
    assert res.returncode == 0, res.stdout + res.stderr
    assert masters(site) == {site.releases[-1]: live_pid(site)} and f"Release: {site.releases[-1]}" in page(site)


def test_warm_workers_false_leaves_new_workers_cold(site):
    """[app] warm_workers = false: no warm-up module in the release or import in the ini; the master answers
    nothing, and a new worker's first request is a real one (the health check's), run cold."""
    cfg = site.proj.root / "deploy.toml"
    cfg.write_text(cfg.read_text().replace("keep_warm = true", "keep_warm = true\nwarm_workers = false"))
    site.proj.commit("cold", {"pages/message.txt": "Cold\n"})
    rel, _ = deploy(site)
    m = live_pid(site)
    new = children(site, m)
    lines = seen_lines(site)
    first: dict[int, tuple] = {}
    for ln in lines:
        first.setdefault(ln[0], ln)
    # (the check reached one of them, cold: the view ran first in its own memory; the other may have had nothing)
    answered = [first[w][1:] if w in first else None for w in new]
    assert m not in first and len(new) == 2 and answered.count(None) <= 1, lines
    assert all(a is None or (a[0], a[2]) == ("fabdeploy-health", w) for a, w in zip(answered, new)), lines
    assert "fabdeploy_warm" not in site.host.path(f"{D}/shared/config/uwsgi.ini").read_text()
    assert not site.host.path(f"{D}/releases/{rel}/fabdeploy_warm.py").exists()
    cfg.write_text(cfg.read_text().replace("\nwarm_workers = false", ""))


def test_a_master_started_on_the_socket_path_itself_is_adopted_then_stopped_once_idle(site):
    """A master an older fabdeploy started (the live ini: its socket is the path nginx uses): the next deploy
    swaps beside it and keeps it warm under its release's slot; the one after kills it idle (SIGKILL: its exit
    handler would remove files that are no longer its), and the live pidfile stays right throughout."""
    res = fab(site, "stop")
    assert res.returncode == 0, res.stdout + res.stderr
    site.host.exec(f"cd {D} && {D}/shared/config/uwsgi-venv/bin/uwsgi --ini {D}/shared/config/uwsgi.ini "
                   ">/dev/null 2>&1", user="sample")
    deadline = time.monotonic() + 30
    while not site.host.path(f"{RUN}/uwsgi.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    legacy, was = live_pid(site), site.releases[-1]
    time.sleep(2)  # (its workers loaded)
    assert masters(site) == {} and f"Release: {was}" in page(site)

    def deploy_one(i):
        def op():
            site.proj.commit(f"adopt {i}", {"pages/message.txt": f"Adopt {i}\n"})
            rel, out = deploy(site)
            assert re.search(r"uwsgi started early beside \d+, swapped", out), out
            return rel
        return op

    under_load(site, deploy_one(1))
    assert masters(site) == {was: legacy, site.releases[-1]: live_pid(site)}  # adopted, warm
    assert site.host.path(f"{RUN}/uwsgi.sock.adopted.{was}").exists()
    under_load(site, deploy_one(2))
    assert gone_soon(site, legacy, 10)
    assert set(masters(site)) == set(site.releases[-2:]) and live_pid(site) == masters(site)[site.releases[-1]]
