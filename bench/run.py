"""fabdeploy benchmark: fab against the one-script limit, on real test hosts behind injected latency.

    sudo .venv/bin/python bench/run.py                 # 1, 3, 10 hosts x 0 and 25 ms one-way delay, 3 runs
    sudo .venv/bin/python bench/run.py --quick         # 1 host, 0 and 25 ms, 1 run (what CI runs)
    sudo .venv/bin/python bench/run.py --servers uwsgi # uWSGI only (default: uwsgi and gunicorn)

For every host a LatencyProxy (bench/latency_proxy.py) sits between the deploying side and the host's sshd
and delays each chunk by D ms each way. Measures, as medians of wall time:
  first     first deploy to fresh hosts (virtualenv built from the wheelhouse)
  code      code-only redeploy (requirements unchanged)
  noop      redeploy of the live revision (detected, nothing done)
  rollback  fab rollback
and the same remote work as ONE shell script per host over ONE ssh session, hosts in parallel ("limit";
its archive and wheels are prepared before the clock starts, so the limit is a strict one).
Each app server ([app] server: uwsgi, gunicorn) is measured on the same hosts in the same run, one after
the other. Prints fab / limit ratios, the SSH connections and channels fab opened per host, and gunicorn's
times beside uWSGI's. Asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO / "bench")]

import hostlab  # noqa: E402
from latency_proxy import LatencyProxy  # noqa: E402

from fabdeploy import model, pipeline  # noqa: E402
from fabdeploy.config import load_config  # noqa: E402
from fabdeploy.hosts.target import Target  # noqa: E402
from fabdeploy.local.source import bundle, read_source, release_id  # noqa: E402
from fabdeploy.local.wheelhouse import build_wheels, venv_hash  # noqa: E402
from fabdeploy.ops.rollback import rollback_script  # noqa: E402
from fabdeploy.remote.script import Script  # noqa: E402
from fabdeploy.remote.shell import packed_command  # noqa: E402
from fabdeploy.steps import live_check, lock, setup  # noqa: E402
from fabdeploy.steps.lock import LockOwner  # noqa: E402

FAB = str(Path(sys.executable).parent / "fab")
WHEELS = REPO / ".cache" / "wheels"
OFFLINE = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(WHEELS)}
BASE_PORT = 41000
FIRST_INDEX = 150
BENCH_SECRET_KEY = "bench-" + "k" * 50  # the limit's hosts share one key, as a fleet deployed by fab does


def git(cwd, *args):
    return subprocess.run(["git", "-C", str(cwd), "-c", "user.name=bench", "-c", "user.email=b@b", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


class Bench:
    def __init__(self, work: Path, nhosts: int):
        self.work = work
        self.hosts = [hostlab.create_host(f"bench{i}", FIRST_INDEX + i) for i in range(nhosts)]
        self.proxies: list[LatencyProxy] = []
        self.src = work / "src"
        shutil.copytree(REPO / "tests" / "sample_project", self.src,
                        ignore=shutil.ignore_patterns("__pycache__", "db.sqlite3", "media"))
        git(self.src, "init", "-q", "-b", "main")
        self.commit("initial")
        (work / "fabfile.py").write_text("from fabdeploy.tasks import *\n")
        self.known = work / "known_hosts"
        lines = hostlab.known_hosts().read_text().splitlines()
        with self.known.open("w") as f:
            for i, h in enumerate(self.hosts):
                key = next(ln.split(" ", 1)[1] for ln in lines if ln.startswith(h.address + " "))
                f.write(f"[127.0.0.1]:{BASE_PORT + i} {key}\n")
        self.counter = 0
        self.server = "uwsgi"

    def commit(self, message: str) -> None:
        (self.src / "pages" / "message.txt").write_text(f"{message}\n")
        git(self.src, "add", "-A")
        git(self.src, "commit", "-q", "-m", message, "--allow-empty")

    def set_delay(self, delay_ms: float) -> None:
        for p in self.proxies:
            p.stop()
        self.proxies = [LatencyProxy(BASE_PORT + i, (h.address, 22), delay_ms).start()
                        for i, h in enumerate(self.hosts)]

    def config(self, n: int) -> Path:
        targets = ", ".join(f'"deploy@127.0.0.1:{BASE_PORT + i}"' for i in range(n))
        path = self.work / f"deploy-{n}.toml"
        path.write_text(textwrap.dedent(f"""\
            [project]
            name = "bench"
            source = "src"
            django_settings = "sampleproject.settings"
            wsgi = "sampleproject.wsgi:application"
            hosts = [{targets}]
            [app]
            server = "{self.server}"
            [paths]
            deploy_to = "/srv/bench"
            keep_releases = 5
            [uwsgi]
            processes = 2
            threads = 2
            [gunicorn]
            workers = 2
            threads = 2
            [nginx]
            server_name = "bench.test"
            [pip]
            wheelhouse = true
            [ssh]
            known_hosts = "{self.known}"
            identity_file = "{hostlab.client_key()}"
            """))
        return path

    def reset(self, n: int) -> None:
        """Fresh hosts for a first deploy: stop the app server, remove the site and deploy_to."""
        for h in self.hosts[:n]:
            h.exec("for s in uwsgi gunicorn; do p=$(cat /srv/bench/shared/run/$s.pid 2>/dev/null) || continue; "
                   "kill -INT $p; for i in $(seq 50); do [ -e /proc/$p ] || break; sleep 0.1; done; done; "
                   "rm -rf /srv/bench /etc/nginx/sites-enabled/bench /etc/nginx/sites-available/bench", check=False)

    def fab(self, n: int, *args: str) -> tuple[float, int, int]:
        """Wall time of one fab command, and SSH connections and channels it opened per host."""
        trace = self.work / "trace"
        trace.unlink(missing_ok=True)
        before = sum(p.connections for p in self.proxies[:n])
        env = {**os.environ, **OFFLINE, "FABDEPLOY_TRACE": str(trace),
               "XDG_CACHE_HOME": str(self.work / "cache")}
        t = time.monotonic()
        res = subprocess.run([FAB, *args, "--config", str(self.config(n))], cwd=self.work, env=env,
                             capture_output=True, text=True, timeout=900)
        wall = time.monotonic() - t
        if res.returncode != 0:
            raise SystemExit(f"bench: fab {' '.join(args)} failed:\n{res.stdout}{res.stderr}")
        channels = len(trace.read_text().splitlines()) if trace.exists() else 0
        conns = sum(p.connections for p in self.proxies[:n]) - before
        return wall, conns // n, channels // n

    # ---- the limit: the same remote work as one script per host over one ssh session --------------------
    def limit(self, n: int, action: str) -> float:
        os.environ.update(OFFLINE)
        os.environ["XDG_CACHE_HOME"] = str(self.work / "cache")
        cfg = load_config(str(self.config(n)))
        owner = LockOwner.new(action, "bench@limit")
        if action == "rollback":
            script, stdin = rollback_script(cfg, owner, None, False, 0), None
        elif action == "noop":
            source = read_source(cfg)
            fp = live_check.fingerprint(cfg, source.revision, source.requirements)
            script = Script([setup.setup(cfg, lock.acquire(cfg, owner),
                                          live_check.unchanged_exit(cfg, fp, lock.release(cfg, owner)))])
            stdin = None
        else:
            facts = self.facts(cfg)
            source = read_source(cfg)
            key = venv_hash(cfg, source.requirements, facts.python_version)
            need = key not in facts.venvs
            wheels = build_wheels(cfg, source.requirement_files, facts.python_version, facts.python_platform,
                                  key) if need else []
            fp = live_check.fingerprint(cfg, source.revision, source.requirements)
            rel = model.Release(release_id(source), source.revision, source.branch, source.kind, "now",
                                owner.who, key, bool(wheels), fp)
            # fab's own three invocations (pipeline.APP), as one script; every host gets the same SECRET_KEY, as
            # fab gives a fleet one key
            state = pipeline.RunState(cfg, Target.named(cfg, "127.0.0.1"), owner, rel.id, facts=facts,
                                      fingerprint=fp, requirement_files=source.requirement_files,
                                      secret_key=BENCH_SECRET_KEY)
            built = []
            for name in pipeline.APP:
                state.rel = None if name == "setup" else rel
                built += pipeline.script("app", name, state).phases
            script, stdin = Script(built, (BENCH_SECRET_KEY,)), bundle(source.tar, wheels)

        # fab's three scripts in one pass Linux's 128 KiB limit of one argument (sshd runs the command with
        # `sh -c`): the script travels packed (gzip + base64) and is run by eval (remote/shell.py packed_command)
        packed = packed_command(script.text())

        def one(i: int) -> None:
            cmd = ["ssh", "-F", "/dev/null", "-i", str(hostlab.client_key()), "-o", "IdentitiesOnly=yes",
                   "-o", f"UserKnownHostsFile={self.known}", "-o", "StrictHostKeyChecking=yes", "-o",
                   "BatchMode=yes", "-p", str(BASE_PORT + i), "deploy@127.0.0.1", packed]
            res = subprocess.run(cmd, input=stdin or b"", capture_output=True, timeout=900)
            if res.returncode != 0:
                raise SystemExit(f"bench: limit {action} failed on host {i}: {res.stderr.decode()[-800:]}")

        t = time.monotonic()
        with ThreadPoolExecutor(max_workers=n) as pool:
            list(pool.map(one, range(n)))
        return time.monotonic() - t

    def facts(self, cfg) -> model.Facts:
        """What setup would learn (read before the clock starts; the limit knows it in advance)."""
        from fabdeploy.hosts.connect import make_connection
        from fabdeploy.ops.plan import facts_from, read_host
        conn = make_connection(cfg.project.hosts[0], cfg)
        conn.open()
        try:
            raw = read_host(conn, cfg)
        finally:
            conn.close()
        return facts_from(raw)

    def close(self) -> None:
        for p in self.proxies:
            p.stop()
        for h in self.hosts:
            h.destroy()


def measure(b: Bench, n: int, runs: int) -> dict[str, dict]:
    res: dict[str, dict] = {m: {"fab": [], "limit": [], "conns": 0, "channels": 0}
                            for m in ("first", "code", "noop", "rollback")}

    def record(m, sample):
        wall, conns, channels = sample
        res[m]["fab"].append(wall)
        res[m]["conns"], res[m]["channels"] = conns, channels

    for r in range(runs):
        b.reset(n)
        record("first", b.fab(n, "deploy"))
        b.reset(n)
        res["first"]["limit"].append(b.limit(n, "deploy"))
        b.commit(f"code {n} {r} a")
        record("code", b.fab(n, "deploy"))
        b.commit(f"code {n} {r} b")
        res["code"]["limit"].append(b.limit(n, "deploy"))
        record("noop", b.fab(n, "deploy"))
        res["noop"]["limit"].append(b.limit(n, "noop"))
        record("rollback", b.fab(n, "rollback"))
        res["rollback"]["limit"].append(b.limit(n, "rollback"))
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 host, 1 run (for CI)")
    ap.add_argument("--hosts", default="1,3,10")
    ap.add_argument("--delays", default="0,25", help="one-way delays in ms")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--servers", default="uwsgi,gunicorn", help="app servers to measure, side by side")
    args = ap.parse_args()
    servers = [x.strip() for x in args.servers.split(",") if x.strip()]
    hosts = [1] if args.quick else [int(x) for x in args.hosts.split(",")]
    runs = 1 if args.quick else args.runs
    delays = [float(x) for x in args.delays.split(",")]
    if os.geteuid() != 0:
        print("bench: run as root (it creates network namespaces)", file=sys.stderr)
        return 1
    hostlab.ensure_machine_setup()
    work = Path(tempfile.mkdtemp(prefix="fabdeploy-bench-"))
    b = Bench(work, max(hosts))
    rows = []
    try:
        for delay in delays:
            b.set_delay(delay)
            for n in hosts:
                for server in servers:
                    b.server = server
                    for m, r in measure(b, n, runs).items():
                        fab, limit = statistics.median(r["fab"]), statistics.median(r["limit"])
                        rows.append((server, m, n, delay, fab, limit, r["conns"], r["channels"]))
                        print(f"  measured {server:<8} {m:<8} hosts={n:<2} delay={delay:g}ms fab={fab:.2f}s "
                              f"limit={limit:.2f}s", flush=True)
                b.reset(n)
    finally:
        b.close()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nfabdeploy benchmark: medians of {runs} run(s); machine: {os.cpu_count()} cores")
    print(f"{'server':<9} {'measure':<9} {'hosts':>5} {'delay':>6} {'fab s':>7} {'limit s':>8} {'fab/limit':>9} "
          f"{'ssh conns/host':>14} {'channels/host':>13}")
    one_host = {(sv, m, d): f for sv, m, n, d, f, *_ in rows if n == 1}
    for sv, m, n, d, fab, limit, conns, channels in rows:
        print(f"{sv:<9} {m:<9} {n:>5} {d:>4g}ms {fab:>7.2f} {limit:>8.2f} {fab / limit:>9.2f} {conns:>14} "
              f"{channels:>13}")
    scaled = [(sv, m, n, d, fab / one_host[(sv, m, d)]) for sv, m, n, d, fab, *_ in rows if n > 1]
    if scaled:
        print("\nscaling (fab time with N hosts / with 1 host):")
        for sv, m, n, d, ratio in scaled:
            print(f"  {sv:<9} {m:<9} {n:>2} hosts {d:>4g}ms  {ratio:.2f}")
    by = {(sv, m, n, d): fab for sv, m, n, d, fab, *_ in rows}
    others = [sv for sv in servers if sv != "uwsgi"]
    if "uwsgi" in servers and others:
        print("\napp servers side by side (fab time / uWSGI's, same hosts, same run):")
        for sv in others:
            for (s0, m, n, d), fab in by.items():
                if s0 == sv and ("uwsgi", m, n, d) in by:
                    print(f"  {sv:<9} {m:<9} {n:>2} hosts {d:>4g}ms  {fab:.2f}s vs {by[('uwsgi', m, n, d)]:.2f}s"
                          f"  = {fab / by[('uwsgi', m, n, d)]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
