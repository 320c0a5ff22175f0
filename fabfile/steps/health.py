"""The health gate: after the switch and reload, an HTTP check through nginx on the host itself; when it
fails (or uWSGI did not come up), the same remote invocation switches back to the previous release,
reloads, checks again and marks the new release bad.

The rule (one place, PROBE_PY, used by the deploy's health gate, the balancer's check and `fab status`): GET
`health.path` once per name of `nginx.server_name` (as the Host header); follow redirects that stay on that
host; the final answer must be 2xx, or one of `health.status` when that lists codes (a listed code is
accepted as it is, without following it).
"""
from __future__ import annotations

import json

from fabdeploy import appserver
from fabdeploy.config import Config
from fabdeploy.front import nginx, tls
from fabdeploy.front.nginx import nginx_reload_lines
from fabdeploy.hosts.layout import Layout
from fabdeploy.hosts.roles import Server, bind_address, runs_nginx
from fabdeploy.remote import root
from fabdeploy.remote.markers import fail_expanded, note
from fabdeploy.remote.script import Phase
from fabdeploy.remote.shell import q
from fabdeploy.steps.activate import activate, reload

# Python for the host's python3, after the app server's probe_client_py (its `app_get`, for a protocol other
# than HTTP). probe(spec, host) checks one Host name by the rule and returns (ok, one line saying what
# happened, final status). spec: proto ("http": HTTP, through nginx or straight to an app server that speaks
# it; else the app server's own protocol, e.g. "uwsgi", straight to its TCP socket: an app host behind a load
# balancer without nginx), addr, port, path, accept (codes; [] = a final 2xx after same-host redirects), tls
# (the site serves https), cafile (proto "https": the site's certificate chain on the host, whose CA the
# check trusts besides the system's).
PROBE_PY = r"""
import http.client
from urllib.parse import urljoin, urlsplit
def _fetch(conn, host, path):
    # one GET on an open connection (http or https): (status, lower-cased headers)
    try:
        conn.request("GET", path, headers={"Host": host, "User-Agent": "fabdeploy-health"})
        resp = conn.getresponse()
        resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()
def http_get(addr, port, host, path):
    return _fetch(http.client.HTTPConnection(addr, port, timeout=5), host, path)
class _SNIConnection(http.client.HTTPSConnection):
    # https to an address with another name for SNI and the certificate check (the site's name)
    def __init__(self, addr, port, name, context):
        super().__init__(addr, port, timeout=5, context=context)
        self._name = name
    def connect(self):
        import socket
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self._name)
def tls_context(cafile):
    # the system's CAs and the CA of the site's own chain (the certificates after the leaf; a lone
    # self-signed one itself): the certificate must verify for the name asked
    import ssl
    ctx = ssl.create_default_context()
    try:
        text = open(cafile).read() if cafile else ""
    except OSError:
        text = ""
    end = "-----END CERTIFICATE-----"
    certs = [c + end + "\n" for c in text.split(end) if "-----BEGIN CERTIFICATE-----" in c]
    cas = certs[1:] or certs
    if cas:
        ctx.load_verify_locations(cadata="".join(c[c.index("-----BEGIN"):] for c in cas))
        if len(certs) > 1:  # (an intermediate as the anchor: the chain file need not hold the root)
            ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return ctx
def https_get(spec, addr, port, host, path):
    name = urlsplit("https://" + host).hostname or host
    return _fetch(_SNIConnection(addr, port, name, tls_context(spec.get("cafile", ""))), host, path)
def _printable(text):
    return "".join(c if c.isprintable() else "?" for c in text)[:200]
def probe(spec, host):
    if spec["proto"] == "https":
        get = lambda a, p, h, pa: https_get(spec, a, p, h, pa)
    else:
        get = http_get if spec["proto"] == "http" else app_get
    scheme = "https" if spec["proto"] == "https" else "http"
    accept, path = spec["accept"], spec["path"]
    said = f"GET {path} (Host: {host}) ->"
    name = (urlsplit("http://" + host).hostname or host).lower()
    seen = []
    while True:
        status, headers = get(spec["addr"], spec["port"], host, path)
        said += f" {status}"
        if status in accept:
            return True, said, status
        where = headers.get("location", "")
        if 300 <= status < 400 and status != 304 and where:
            url = urljoin(f"{scheme}://{host}{path}", where)
            u = urlsplit(url)
            said += " " + _printable(url if (u.hostname or "").lower() != name or u.scheme != scheme else
                                     where)
            if scheme == "http" and u.scheme == "https" and (u.hostname or "").lower() == name and not spec["tls"]:
                return False, said + (": a redirect to https but the site has no TLS"
                                      " (SECURE_SSL_REDIRECT = True in the Django settings?)"), status
            if scheme == "http" and u.scheme == "https" and (u.hostname or "").lower() == name:
                return True, said, status
            if u.scheme != scheme or (u.hostname or "").lower() != name:
                return False, said + ": a redirect to another host (list the code in health.status to accept it)", status
            path = (u.path or "/") + ("?" + u.query if u.query else "")
            if path in seen or len(seen) >= 5:
                return False, said + ": too many redirects", status
            seen.append(path)
            said += " ->"
            continue
        if accept:
            return False, said + f" (health.status accepts {', '.join(map(str, accept))})", status
        if 200 <= status < 300:
            return True, said, status
        if status == 400:
            return False, said + (f": Bad Request; does ALLOWED_HOSTS ([django] allowed_hosts) include {host}?"), status
        return False, said, status
"""

# Retry until every name passes or the deadline; print one line (the failing names' answers); exit 0 when healthy.
CHECK_TAIL_PY = r"""
import json, sys, time
spec = json.loads(sys.argv[1])
deadline = time.monotonic() + spec["timeout"]
pending, last = list(spec["hosts"]), {}
while True:
    for host in list(pending):
        try:
            ok, last[host], _ = probe(spec, host)
        except Exception as exc:
            ok, last[host] = False, f"GET {spec['path']} (Host: {host}): {exc}"
        if ok:
            pending.remove(host)
    if not pending:
        print("; ".join(last[h] for h in spec["hosts"]))
        sys.exit(0)
    if time.monotonic() > deadline:
        print("; ".join(last[h] for h in pending))
        sys.exit(1)
    time.sleep(0.3)
"""


def probe_program(cfg: Config) -> str:
    """PROBE_PY with the config's app server's client for its own protocol."""
    return appserver.of(cfg).probe_client_py + PROBE_PY


def check_program(cfg: Config) -> str:
    """The health check program: probe every Host name by the rule, retrying until healthy or the timeout."""
    return probe_program(cfg) + CHECK_TAIL_PY


def http_target(cfg: Config, host: str) -> tuple[str, int, str]:
    """Address, port and Host header that reach this site's nginx server block from the host itself."""
    listen = str(cfg.nginx.listen)
    addr, _, port = listen.rpartition(":") if ":" in listen else ("", "", listen)
    addr = addr.strip("[]") or "127.0.0.1"
    if addr in ("0.0.0.0", "*", "::"):
        addr = "127.0.0.1" if addr != "::" else "::1"
    return addr, int(port), host_headers(cfg, host)[0]


def check_target(cfg: Config, host: str, server: Server | None = None) -> tuple[str, str, int, str]:
    """(protocol, address, port, Host header) of a host's own check: "http" through its nginx, or straight
    to the app server's TCP socket in its own protocol (an app host behind a load balancer, without nginx)."""
    addr, port, host_header = http_target(cfg, host)
    if tls.terminates(cfg, server):  # (https to this host's nginx, the certificate checked)
        return "https", addr, cfg.tls.port, host_header
    if runs_nginx(cfg, server):
        return "http", addr, port, host_header
    addr = bind_address(cfg, server)
    proto = appserver.of(cfg).protocol
    return proto, {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(addr, addr), cfg.balancer.port, host_header


def site_has_tls(cfg: Config) -> bool:
    """Whether the site serves https (then a same-host redirect to https, seen by a plain-HTTP check of an
    app host behind TLS balancers, is healthy)."""
    return tls.enabled(cfg)


def accepted_statuses(cfg: Config) -> list[int]:
    """health.status as a list: [] (the default rule: a final 2xx) for the old 0, [N] for the old N."""
    status = cfg.health.status
    if isinstance(status, int):
        return [status] if status else []
    return list(status)


def host_headers(cfg: Config, host: str) -> list[str]:
    """The Host headers the check sends: each plain name of nginx.server_name, else the host's own name."""
    names = [n for n in cfg.server_names if n != "_" and not n.startswith("~") and "*" not in n]
    return names or [host]


def check_spec(cfg: Config, host: str, server: Server | None = None) -> dict:
    """What PROBE_PY needs to check one host by the rule (JSON for the host's python3)."""
    proto, addr, port, _ = check_target(cfg, host, server)
    return {"proto": proto, "addr": addr, "port": port, "hosts": host_headers(cfg, host), "path": cfg.health.path,
            "accept": accepted_statuses(cfg), "tls": site_has_tls(cfg), "timeout": cfg.health.timeout,
            **({"cafile": tls.check_chain(cfg)} if proto == "https" else {})}


# The common healthy case without a Python start (python3 alone takes 60-100 ms on a small host, more while
# the new workers load): plain HTTP, one GET per Host name with bash's /dev/tcp, healthy only when every
# name's first answer is healthy by the rule without following anything (in health.accept, or a 2xx when
# that is empty); it prints what check_program would print then. Anything else (a redirect, another code,
# no answer, a body without Content-Length, no bash) exits non-zero and check_program decides, from its
# first request, as before. Like check_program it reads the whole answer and closes first (the server's end
# is left in no TIME_WAIT on its port). $1 address, $2 port, $3 path, $4 accepted codes (space-separated,
# "" = any 2xx), then the Host names.
FAST_SH = r"""a=$1 p=$2 path=$3 acc=$4; shift 4; said=
for h; do
  exec 3<>"/dev/tcp/$a/$p" || exit 1
  printf 'GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: fabdeploy-health\r\nAccept-Encoding: identity\r\n\r\n' "$path" "$h" >&3 || exit 1
  IFS=' ' read -r v s _ <&3 || exit 1
  s=${s%$'\r'}
  case $v in HTTP/1.[01]) ;; *) exit 1;; esac
  case $s in [1-5][0-9][0-9]) ;; *) exit 1;; esac
  len=
  while IFS= read -r line <&3; do
    line=${line%$'\r'}
    [ -n "$line" ] || break
    case ${line,,} in content-length:*) len=${line#*:}; len=${len//[!0-9]/};; esac
  done
  if [ -n "$len" ]; then [ "$len" -eq 0 ] || head -c "$len" <&3 >/dev/null || exit 1
  elif [ "$s" != 204 ] && [ "$s" != 304 ]; then exit 1; fi
  exec 3<&-
  if [ -n "$acc" ]; then case " $acc " in *" $s "*) ;; *) exit 1;; esac
  elif [ "$s" -lt 200 ] || [ "$s" -ge 300 ]; then exit 1; fi
  said="${said:+$said; }GET $path (Host: $h) -> $s"
done
printf '%s\n' "$said"
"""
FAST_TIMEOUT = 3  # (seconds: a first answer slower than this is check_program's to wait for)


def fast_check_command(spec: dict) -> str | None:
    """FAST_SH for this check (plain HTTP only), or None."""
    if spec["proto"] != "http" or any(c in spec["path"] for c in " \r\n"):
        return None
    return " ".join([f"timeout {FAST_TIMEOUT} bash -c {q(FAST_SH)} fabdeploy-health", q(spec["addr"]),
                     q(str(spec["port"])), q(spec["path"]), q(" ".join(map(str, spec["accept"]))),
                     *map(q, spec["hosts"]), "2>/dev/null"])


def check_command(cfg: Config, host: str, server: Server | None = None) -> str:
    """The health check of one host: through its nginx, or (an app host behind a load balancer without
    nginx) straight to uWSGI's TCP socket; prints one line, exits 0 when healthy. Over plain HTTP a first
    healthy answer to FAST_SH is taken without starting Python."""
    spec = check_spec(cfg, host, server)
    full = f"{q(cfg.project.python)} -c {q(check_program(cfg))} {q(json.dumps(spec))}"
    fast = fast_check_command(spec)
    return f"{{ {fast} || {full}; }}" if fast else full


def health(cfg: Config, host: str, release_id: str, previous: str, staging: str, site_path: str,
           nginx_pid: str, server: Server | None = None) -> Phase:
    """Check the new release; on failure revert to `previous` (a release path, "" on a first deploy)."""
    lay = Layout(cfg.paths.deploy_to)
    app = appserver.of(cfg)
    R = lay.release(release_id)
    check = check_command(cfg, host, server)
    prev_id = previous.rsplit("/", 1)[-1] if previous else ""
    lines = [
        'why=""',
        'case " $fabdeploy_failed " in *" restart "*) why="the app server or nginx did not come up";; esac',
        f'if [ -z "$why" ]; then if answer=$({check}); then {note("$answer")}; exit 0; '
        'else why=$answer; fi; fi',
        f"touch {q(R + '/.fabdeploy/bad')}",
    ]
    if not cfg.health.revert:
        return Phase("health", lines + [fail_expanded("health check failed: $why (health.revert = false: left as is)")])
    if not previous:
        return Phase("health", lines + [fail_expanded("health check failed: $why; no previous release to revert to")])
    P = q(previous)
    lines += [
        f"[ -f {app.staged_config(P)} ] || "
        + fail_expanded(f"health check failed: $why; cannot revert: {prev_id} has no saved {app.title} config"),
        *activate(cfg, P, q(prev_id)),
        f'V={q(lay.venvs)}/"$(cat {P}/.fabdeploy/venv)"',
        "(",
        *reload(cfg, P, '"$V"', prev_id),
        ") >/dev/null || " + fail_expanded(f"health check failed: $why; reverting to {prev_id} failed too: {app.title} did not come up"),
        *tls.restore_lines(cfg, staging),  # (the certificate files the site before used)
        # the nginx site as it was before this deploy, when this deploy changed it
        f"if [ -f {q(staging + '/site.prev')} ]; then",
        f"  {nginx.install_copy(cfg, staging + '/site.prev', site_path)}",
        f"  if {root.NGINX_TEST} >/dev/null 2>&1; then",
        *["    " + ln for ln in nginx_reload_lines(nginx_pid)],
        "  fi",
        "fi",
        f'if again=$({check}); then '
        + fail_expanded(f"health check failed: $why; reverted to {prev_id} ($again); the new release is marked bad")
        + "; fi",
        fail_expanded(f"health check failed: $why; reverted to {prev_id}, which is unhealthy too: $again"),
    ]
    return Phase("health", lines)
