"""`fab status`: the expiry of the certificate a host serves (every TLS mode), read from the host's readable
copy of the chain (front/tls.check_chain: uploaded files, or the copy made at each deploy and by certbot's
deploy hook), and a warning under WARN_DAYS days."""
from __future__ import annotations

from fabdeploy.config import Config
from fabdeploy.front import tls
from fabdeploy.hosts.roles import Server

WARN_DAYS = 14

# (for the host's python3, part of STATUS_PY) cert_expiry(path) -> {"path", "not_after", "days_left"} or {}
CERT_PY = r"""
def cert_expiry(path):
    if not path:
        return {}
    import ssl, subprocess, time
    try:
        out = subprocess.run(["openssl", "x509", "-noout", "-enddate", "-in", path], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        end = ssl.cert_time_to_seconds(out.split("=", 1)[1])
    except (OSError, IndexError, ValueError, subprocess.SubprocessError):
        return {"path": path, "error": "no readable certificate"}
    return {"path": path, "not_after": time.strftime("%Y-%m-%d", time.gmtime(end)),
            "days_left": int((end - time.time()) // 86400)}
"""


def cert_param(cfg: Config, server: Server) -> str:
    """The chain file STATUS_PY reads on this host ("" when it serves no https)."""
    lb = server.role == "lb"
    return tls.check_chain(cfg) if (lb and tls.enabled(cfg)) or tls.terminates(cfg, server) else ""


def status_line(rep: dict) -> list[str]:
    """The status line of a host's certificate (none without TLS)."""
    c = rep.get("tls") or {}
    if not c:
        return []
    if "error" in c:
        return [f"  tls       {c['path']}: {c['error']}"]
    line = f"  tls       certificate until {c['not_after']} ({c['days_left']} days left)"
    if c["days_left"] < WARN_DAYS:
        line += f"  EXPIRES in under {WARN_DAYS} days: renew it"
    return [line]
