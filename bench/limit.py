"""The limit: fab's own remote work (pipeline.APP's invocations) as ONE script per host over ONE ssh session,
hosts in parallel; its archive and wheels are prepared before the clock starts, so the limit is a strict one."""
from __future__ import annotations

import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from fabdeploy import model, pipeline
from fabdeploy.config import load_config
from fabdeploy.hosts.target import Target
from fabdeploy.local.source import bundle, read_source, release_id
from fabdeploy.local.wheelhouse import build_wheels, venv_hash
from fabdeploy.ops.rollback import rollback_script
from fabdeploy.remote.script import Script
from fabdeploy.remote.shell import packed_command
from fabdeploy.steps import live_check, lock, setup
from fabdeploy.steps.lock import LockOwner

BENCH_SECRET_KEY = "bench-" + "k" * 50  # the limit's hosts share one key, as a fleet deployed by fab does


def limit(config_path: str, ssh_argvs: list[list[str]], action: str, env: dict[str, str]) -> float:
    """Wall time of the limit of `action` (deploy, noop, rollback) on the hosts of ssh_argvs."""
    os.environ.update(env)
    cfg = load_config(config_path)
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
        facts = _facts(cfg)
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
        res = subprocess.run([*ssh_argvs[i], packed], input=stdin or b"", capture_output=True, timeout=900)
        if res.returncode != 0:
            raise SystemExit(f"bench: limit {action} failed on host {i}: {res.stderr.decode()[-800:]}")

    t = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(ssh_argvs)) as pool:
        list(pool.map(one, range(len(ssh_argvs))))
    return time.monotonic() - t


def _facts(cfg) -> model.Facts:
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
