"""The benchmark's printed tables: fab against the limit and the naive script (medians of one run), the app
server's RSS per host, scaling with the host count, and the app servers side by side."""
from __future__ import annotations

import os


def _num(value: float | None, width: int, digits: int = 2) -> str:
    return f"{value:>{width}.{digits}f}" if value is not None else f"{'-':>{width}}"


def _ratio(a: float, b: float | None, width: int) -> str:
    return _num(a / b if b else None, width)


def print_tables(rows: list[dict], rss: list[dict], runs: int, servers: list[str]) -> None:
    print(f"\nfabdeploy benchmark: medians of {runs} run(s); machine: {os.cpu_count()} cores")
    print(f"{'project':<8} {'server':<9} {'measure':<13} {'hosts':>5} {'delay':>6} {'fab s':>7} {'limit s':>8} "
          f"{'naive s':>8} {'fab/limit':>9} {'fab/naive':>9} {'ssh conns/host':>14} {'channels/host':>13}")
    for r in rows:
        print(f"{r['project']:<8} {r['server']:<9} {r['measure']:<13} {r['hosts']:>5} {r['delay']:>4g}ms "
              f"{r['fab']:>7.2f} {r['limit']:>8.2f} {_num(r['naive'], 8)} {_ratio(r['fab'], r['limit'], 9)} "
              f"{_ratio(r['fab'], r['naive'], 9)} {r['conns']:>14} {r['channels']:>13}")
    if rss:
        print("\napp server RSS per host after the code-only redeploy (master + workers, summed; MB, median;"
              " fab warm: the replaced release's master kept warm beside, [app] keep_warm):")
        print(f"{'project':<8} {'server':<9} {'hosts':>5} {'delay':>6} {'fab MB':>7} {'fab warm MB':>11} {'naive MB':>8}")
        for r in rss:
            print(f"{r['project']:<8} {r['server']:<9} {r['hosts']:>5} {r['delay']:>4g}ms {_num(r['fab'], 7, 1)} "
                  f"{_num(r.get('warm'), 11, 1)} {_num(r['naive'], 8, 1)}")
    one_host = {(r["project"], r["server"], r["measure"], r["delay"]): r["fab"] for r in rows if r["hosts"] == 1}
    scaled = [(r, r["fab"] / one_host[k]) for r in rows if r["hosts"] > 1
              and (k := (r["project"], r["server"], r["measure"], r["delay"])) in one_host]
    if scaled:
        print("\nscaling (fab time with N hosts / with 1 host):")
        for r, ratio in scaled:
            print(f"  {r['project']:<8} {r['server']:<9} {r['measure']:<13} {r['hosts']:>2} hosts "
                  f"{r['delay']:>4g}ms  {ratio:.2f}")
    by = {(r["project"], r["server"], r["measure"], r["hosts"], r["delay"]): r["fab"] for r in rows}
    others = [sv for sv in servers if sv != "uwsgi"]
    if "uwsgi" in servers and others:
        print("\napp servers side by side (fab time / uWSGI's, same hosts, same run):")
        for sv in others:
            for (p, s0, m, n, d), fab in by.items():
                base = by.get((p, "uwsgi", m, n, d))
                if s0 == sv and base:
                    print(f"  {p:<8} {sv:<9} {m:<9} {n:>2} hosts {d:>4g}ms  {fab:.2f}s vs {base:.2f}s"
                          f"  = {fab / base:.2f}")
