"""Zero downtime, verified under load: constant HTTP load through nginx (bounded in count and time, to the
test host's own address only) while 5 deploys and 5 rollbacks run. No request may fail or be non-2xx,
and once a deploy/rollback has returned, every response must name the release it switched to."""
from __future__ import annotations

import http.client
import re
import threading
import time
from dataclasses import dataclass

import pytest

from conftest import make_project, release_of, run_fab, sample_config

WORKERS = 4                 # concurrent clients
MAX_REQUESTS = 40_000       # hard bound on the whole load
MAX_SECONDS = 420           # hard bound on the whole load
# Each client pauses between requests: 4 clients without a pause open ~500 connections a second, and with
# TIME_WAIT (60 s) this machine's 28k ephemeral ports run out within a minute of load tests in a row
# ("Cannot assign requested address" on the client, not a failure of the site).
PAUSE = 0.02


@dataclass
class Sample:
    start: float
    end: float
    status: int | None
    release: str
    error: str = ""


class Load:
    def __init__(self, address: str):
        self.address = address
        self.samples: list[Sample] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.loop, daemon=True) for _ in range(WORKERS)]
        self.deadline = time.monotonic() + MAX_SECONDS

    def loop(self) -> None:
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            with self.lock:
                if len(self.samples) >= MAX_REQUESTS:
                    return
            start = time.monotonic()
            try:
                conn = http.client.HTTPConnection(self.address, 80, timeout=30)
                conn.request("GET", "/", headers={"Host": self.address})
                resp = conn.getresponse()
                body = resp.read().decode(errors="replace")
                conn.close()
                m = re.search(r"Release: (\S+)</p>", body)
                sample = Sample(start, time.monotonic(), resp.status, m.group(1) if m else "")
            except Exception as exc:  # noqa: BLE001 - every failure is recorded and fails the test
                sample = Sample(start, time.monotonic(), None, "", f"{type(exc).__name__}: {exc}")
            with self.lock:
                self.samples.append(sample)
            self.stop.wait(PAUSE)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=40)


def broken_deploy_under_load(site, fab, broken_wsgi: str):
    """Commit `broken_wsgi` as the sample project's wsgi.py, deploy it with `fab` while Load runs against the
    host (a second before and after): (fab's result, its stdout + stderr, the samples, the failed ones)."""
    site.proj.commit("broken", {"sampleproject/wsgi.py": broken_wsgi})
    with Load(site.host.address) as load:
        time.sleep(1)
        res = fab(site, "deploy")
        time.sleep(1)
    failed = [s for s in load.samples if s.status is None or not 200 <= s.status < 300]
    return res, res.stdout + res.stderr, load.samples, failed


@pytest.fixture(scope="module")
def site(make_host, tmp_path_factory, wheel_cache):
    host = make_host("load")
    proj = make_project(tmp_path_factory.mktemp("load"))
    proj.write_config(sample_config(host, keep=12))
    res = run_fab(proj.root, "deploy", cache=wheel_cache)
    assert res.returncode == 0, res.stdout + res.stderr
    return host, proj, wheel_cache, release_of(res.stdout)


def test_deploys_and_rollbacks_under_load_drop_nothing(site):
    host, proj, cache, initial = site
    switches: list[tuple[float, float, str]] = []  # (op started, op returned, release now expected)
    with Load(host.address) as load:
        time.sleep(1)
        for i in range(5):
            proj.commit(f"load {i}", {"pages/message.txt": f"Load revision {i}\n"})
            t0 = time.monotonic()
            res = run_fab(proj.root, "deploy", cache=cache)
            assert res.returncode == 0, res.stdout + res.stderr
            switches.append((t0, time.monotonic(), release_of(res.stdout)))
            time.sleep(0.5)
        for _ in range(5):
            t0 = time.monotonic()
            res = run_fab(proj.root, "rollback", cache=cache)
            assert res.returncode == 0, res.stdout + res.stderr
            m = re.search(r"rolled back to (\S+) in", res.stdout)
            switches.append((t0, time.monotonic(), m.group(1)))
            time.sleep(0.5)
        time.sleep(1)
    samples = load.samples
    failed = [s for s in samples if s.status is None or not 200 <= s.status < 300]
    print(f"\nload: {len(samples)} requests by {WORKERS} clients during {len(switches)} switches; "
          f"{len(failed)} failed; slowest {max(s.end - s.start for s in samples):.2f}s")
    assert len(samples) > 200
    assert failed == [], failed[:5]
    # after each operation returned (and before the next began), every response names its release
    for (_, returned, expected), nxt in zip(switches, switches[1:] + [(float("inf"), 0, "")]):
        window = [s for s in samples if s.start > returned and s.end < nxt[0]]
        assert window, f"no requests observed after the switch to {expected}"
        wrong = [s for s in window if s.release != expected]
        assert wrong == [], f"after switching to {expected}: {wrong[:3]}"
    # and the rollbacks went back through the deployed releases, one by one, to the initial one
    deployed = [r for _, _, r in switches[:5]]
    assert [r for _, _, r in switches[5:]] == deployed[3::-1] + [initial]
