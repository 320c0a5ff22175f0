"""What the e2e modules of the app servers and process managers share about a deployed site (a lab host and
a sample project deployed to it with real fab): make one, deploy it, and look at its master, its workers and
its page. A site is a SimpleNamespace: host, proj, cache, releases (deployed, oldest first), d (deploy_to),
port (nginx)."""
from __future__ import annotations

import http.client
from types import SimpleNamespace

from conftest import make_project, release_of, run_fab, sample_config

D = "/srv/sample"


def new_site(host, tmp_path_factory, wheel_cache, label: str, extra: str = "", *, name: str = "sample",
             port: int = 80, keep: int = 4) -> SimpleNamespace:
    """A project (label: its temp directory's name) configured to deploy `name` to /srv/<name> on host."""
    proj = make_project(tmp_path_factory.mktemp(label))
    d = D if name == "sample" else f"/srv/{name}"
    proj.write_config(sample_config(host, name=name, deploy_to=d, listen=port, keep=keep, extra=extra))
    return SimpleNamespace(host=host, proj=proj, cache=wheel_cache, releases=[], name=name, d=d, port=port)


def fab(site, *args):
    return run_fab(site.proj.root, *args, cache=site.cache)


def deploy(site):
    """fab deploy, which must succeed: (the new release, its whole output)."""
    res = fab(site, "deploy")
    assert res.returncode == 0, res.stdout + res.stderr
    site.releases.append(release_of(res.stdout))
    return site.releases[-1], res.stdout + res.stderr


def sh(where, command: str) -> str:
    """A command's stripped stdout on a host (where: the host, or a site)."""
    return getattr(where, "host", where).exec(command).stdout.strip()


def master(site, name: str = "uwsgi") -> int:
    """The pid in the app server's pidfile."""
    return int(site.host.path(f"{site.d}/shared/run/{name}.pid").read_text())


def seen_lines(site) -> list[tuple[int, str, str, int]]:
    """(pid, User-Agent, the collected site.css's first line then, the pid that first ran the view in that
    process's memory) of every line of the sample's seen.log (health.path /seen), in order."""
    text = site.host.path(f"{site.d}/shared/media/seen.log").read_text()
    return [(int(p), a, c, int(f)) for p, a, c, f in (ln.split(" ") for ln in text.splitlines())]


def children(where, pid: int, comm: str = "") -> list[int]:
    """The children of pid on the host (only those named comm, when given)."""
    named = f" && grep -qsx {comm} /proc/$c/comm" if comm else ""
    return [int(p) for p in sh(where, f"for c in $(grep -l '^PPid:[[:space:]]*{pid}$' /proc/[0-9]*/status "
                                      f"| cut -d/ -f3); do true{named} && echo $c; done; true").split()]


def uwsgi_children(where, pid: int) -> list[int]:
    """The uWSGI processes pid started (an emperor's vassal masters)."""
    return children(where, pid, "uwsgi")


def workers(site, pid: int) -> list[str]:
    """The cwd of each child of the master."""
    return [sh(site, f"readlink /proc/{k}/cwd") for k in children(site, pid)]


def page(site) -> str:
    """The site's page through nginx (which must answer 200)."""
    conn = http.client.HTTPConnection(site.host.address, site.port, timeout=10)
    try:
        conn.request("GET", "/", headers={"Host": site.host.address})
        resp = conn.getresponse()
        body = resp.read().decode()
    finally:
        conn.close()
    assert resp.status == 200, body[:500]
    return body
