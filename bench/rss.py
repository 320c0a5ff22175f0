"""The app server's memory on a lab host: RSS of its master and the master's children (its workers), summed,
read from /proc inside the host, once the site serves the expected release."""
from __future__ import annotations

import time


def wait_served(host, server_name: str, text: str, timeout: float = 30) -> bool:
    """Poll GET / (Host: server_name) until it answers 200 with text in the page (the naive reload does not
    wait for its workers); False after timeout. Then give the old generation of workers a second to exit."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, _, body = host.http("/", host_header=server_name)
            if status == 200 and text.encode() in body:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    time.sleep(1)
    return True


def rss_kb(host, pidfile: str) -> int:
    """VmRSS of the pidfile's process and of its children, summed (kB; shared pages count in each)."""
    out = host.exec(f"p=$(cat {pidfile}) && for x in $p $(ps -o pid= --ppid $p); do "
                    "awk '/^VmRSS/ {print $2}' /proc/$x/status; done | awk '{s += $1} END {print s + 0}'")
    return int(out.stdout.strip() or 0)


def warm_kb(host, run_dir: str, server: str) -> int:
    """RSS of the masters kept warm beside the live one (fab's `[app] keep_warm`: the slots' pidfiles
    <server>.pid.<release> other than the live master's) and their children, summed (kB; 0 when none)."""
    out = host.exec(f"cd {run_dir} 2>/dev/null || exit 0; live=$(cat {server}.pid 2>/dev/null); "
                    f"for f in {server}.pid.*; do [ -f \"$f\" ] || continue; p=$(cat \"$f\"); "
                    "[ -n \"$p\" ] && [ \"$p\" != \"$live\" ] && [ -e /proc/$p ] || continue; "
                    "for x in $p $(ps -o pid= --ppid $p); do awk '/^VmRSS/ {print $2}' /proc/$x/status; done; "
                    "done | awk '{s += $1} END {print s + 0}'")
    return int(out.stdout.strip() or 0)
