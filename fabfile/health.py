"""The health gate: after the switch and reload, an HTTP check through nginx on the host itself; when it
fails (or uWSGI did not come up), the same remote invocation switches back to the previous release,
reloads, checks again and marks the new release bad.
"""
from __future__ import annotations

from .config import Config
from .layout import Layout
from .roles import Server, bind_address, runs_nginx
from .script import MARK, Phase, fail_expanded, q

# Run by the host's python3: retry until the deadline; print the last answer; exit 0 when healthy.
# proto "http": through nginx; "uwsgi": straight to uWSGI's TCP socket in the uwsgi protocol (an app host
# behind a load balancer has no nginx of its own).
# GET `path` from uWSGI's TCP socket in the uwsgi protocol; returns the HTTP status.
UWSGI_GET_PY = r"""
import socket, struct
def uwsgi_get(addr, port, host, path):
    p, _, qs = path.partition("?")
    env = {"REQUEST_METHOD": "GET", "PATH_INFO": p, "QUERY_STRING": qs, "REQUEST_URI": path,
           "SERVER_NAME": host, "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": host,
           "HTTP_USER_AGENT": "fabdeploy-health", "REMOTE_ADDR": "127.0.0.1"}
    body = b"".join(struct.pack("<H", len(k)) + k + struct.pack("<H", len(v)) + v
                    for k, v in ((k.encode(), v.encode()) for k, v in env.items()))
    with socket.create_connection((addr, port), timeout=5) as s:
        s.sendall(struct.pack("<BHB", 0, len(body), 0) + body)
        head = b""
        while b"\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
    return int(head.split(b" ", 2)[1])
"""

CHECK_PY = UWSGI_GET_PY + r"""
import http.client, sys, time
proto, addr, port, host, path, want, timeout = sys.argv[1:8]
port, want, deadline = int(port), int(want), time.monotonic() + float(timeout)
last = "no answer"
while True:
    try:
        if proto == "uwsgi":
            status = uwsgi_get(addr, port, host, path)
        else:
            conn = http.client.HTTPConnection(addr, port, timeout=5)
            conn.request("GET", path, headers={"Host": host, "User-Agent": "fabdeploy-health"})
            resp = conn.getresponse()
            resp.read()
            status = resp.status
        last = f"GET {path} -> {status}"
        if (status == want) if want else (status < 500):
            print(last)
            sys.exit(0)
    except Exception as exc:
        last = f"GET {path}: {exc}"
    if time.monotonic() > deadline:
        print(last)
        sys.exit(1)
    time.sleep(0.3)
"""


def http_target(cfg: Config, host: str) -> tuple[str, int, str]:
    """Address, port and Host header that reach this site's nginx server block from the host itself."""
    listen = str(cfg.nginx.listen)
    addr, _, port = listen.rpartition(":") if ":" in listen else ("", "", listen)
    addr = addr.strip("[]") or "127.0.0.1"
    if addr in ("0.0.0.0", "*", "::"):
        addr = "127.0.0.1" if addr != "::" else "::1"
    names = [n for n in cfg.server_names if n != "_" and not n.startswith("~") and "*" not in n]
    return addr, int(port), (names[0] if names else host)


def check_target(cfg: Config, host: str, server: Server | None = None) -> tuple[str, str, int, str]:
    """(protocol, address, port, Host header) of a host's own check: "http" through its nginx, or "uwsgi"
    straight to uWSGI's TCP socket (an app host behind a load balancer, without nginx)."""
    addr, port, host_header = http_target(cfg, host)
    if runs_nginx(cfg, server):
        return "http", addr, port, host_header
    addr = bind_address(cfg, server)
    return "uwsgi", {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(addr, addr), cfg.balancer.port, host_header


def check_command(cfg: Config, host: str, server: Server | None = None) -> str:
    """The health check of one host: through its nginx, or (an app host behind a load balancer without
    nginx) straight to uWSGI's TCP socket."""
    proto, addr, port, host_header = check_target(cfg, host, server)
    args = [proto, addr, port, host_header, cfg.health.path, cfg.health.status, cfg.health.timeout]
    return f"{q(cfg.project.python)} -c {q(CHECK_PY)} " + " ".join(q(a) for a in args)


def health(cfg: Config, host: str, release_id: str, previous: str, staging: str, site_path: str,
           nginx_pid: str, server: Server | None = None) -> Phase:
    """Check the new release; on failure revert to `previous` (a release path, "" on a first deploy)."""
    from .phases import nginx_reload_lines, static_switch, uwsgi_restart_lines  # noqa: avoid a cycle

    lay = Layout(cfg.paths.deploy_to)
    R = lay.release(release_id)
    check = check_command(cfg, host, server)
    prev_id = previous.rsplit("/", 1)[-1] if previous else ""
    lines = [
        'why=""',
        'case " $fabdeploy_failed " in *" restart "*) why="the app server or nginx did not come up";; esac',
        f'if [ -z "$why" ]; then if answer=$({check}); then echo "{MARK} note $answer"; exit 0; '
        'else why=$answer; fi; fi',
        f"touch {q(R + '/.fabdeploy/bad')}",
    ]
    if not cfg.health.revert:
        return Phase("health", lines + [fail_expanded("health check failed: $why (health.revert = false: left as is)")])
    if not previous:
        return Phase("health", lines + [fail_expanded("health check failed: $why; no previous release to revert to")])
    P = q(previous)
    lines += [
        f"[ -f {P}/.fabdeploy/uwsgi.ini ] || "
        + fail_expanded(f"health check failed: $why; cannot revert: {prev_id} has no saved uWSGI config"),
        f"ln -sfn {P} {q(lay.current + '.fabdeploy-tmp')}",
        f"mv -Tf {q(lay.current + '.fabdeploy-tmp')} {q(lay.current)}",
        *static_switch(cfg, q(prev_id)),
        f"cp -p {P}/.fabdeploy/uwsgi.ini {q(lay.uwsgi_ini)}",
        f'V={q(lay.venvs)}/"$(cat {P}/.fabdeploy/venv)"',
        "(",
        *uwsgi_restart_lines(cfg, P, '"$V"', prev_id),
        ") >/dev/null || " + fail_expanded(f"health check failed: $why; reverting to {prev_id} failed too: uWSGI did not come up"),
        # the nginx site as it was before this deploy, when this deploy changed it
        f"if [ -f {q(staging + '/site.prev')} ]; then",
        f"  sudo -n install -m 0644 {q(staging + '/site.prev')} {q(site_path)}",
        "  if sudo -n nginx -t >/dev/null 2>&1; then",
        *["    " + ln for ln in nginx_reload_lines(nginx_pid)],
        "  fi",
        "fi",
        f'if again=$({check}); then '
        + fail_expanded(f"health check failed: $why; reverted to {prev_id} ($again); the new release is marked bad")
        + "; fi",
        fail_expanded(f"health check failed: $why; reverted to {prev_id}, which is unhealthy too: $again"),
    ]
    return Phase("health", lines)
