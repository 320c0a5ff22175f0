"""A local ACME server in a lab host: Debian's `pebble` run inside the host's namespaces (never on the
machine), its config, certificates and log under the host's private /etc and /tmp:

- its HTTPS API (https://localhost:14000/dir) uses a certificate for "localhost" from a CA made here with
  openssl (tlscerts.make_certs): certbot trusts it through [tls] ca_bundle (REQUESTS_CA_BUNDLE);
- its HTTP-01 validation goes to port 80 (`httpPort`) of the name, which Go's resolver finds in the host's
  private /etc/hosts (the host's own address);
- certbot's work directory is pointed at the host's private /run (/etc/letsencrypt/cli.ini of the host), so
  nothing lands in the machine's /var/lib.
The certificates pebble issues chain to a root it makes at start: `issuing_root()` (management API /roots/0)."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from tlscerts import make_certs

CA_BUNDLE = "/etc/pebble/ca.pem"  # (on the host) what certbot trusts for pebble's API: tls.ca_bundle
DIRECTORY = "https://localhost:14000/dir"  # tls.server
OTHER_DIRECTORY = "https://pebble.lab.test:14000/dir"  # the same server under another URL: "another CA"


def start(host, names: list[str], workdir: Path) -> None:
    """Start pebble in `host` and make `names` resolve to the host's address there."""
    certs = make_certs(workdir, ["localhost", "pebble.lab.test"], tag="pebble")
    etc = host.path("/etc/pebble")
    etc.mkdir(parents=True, exist_ok=True)
    shutil.copy(certs.ca, etc / "ca.pem")
    shutil.copy(certs.chain, etc / "cert.pem")
    shutil.copy(certs.key, etc / "key.pem")
    (etc / "config.json").write_text(json.dumps({"pebble": {
        "listenAddress": "127.0.0.1:14000", "managementListenAddress": "127.0.0.1:15000",
        "certificate": "/etc/pebble/cert.pem", "privateKey": "/etc/pebble/key.pem",
        "httpPort": 80, "tlsPort": 5001, "ocspResponderURL": "", "externalAccountBindingRequired": False}}))
    with host.path("/etc/hosts").open("a") as f:
        f.write(f"{host.address} {' '.join(names)}\n127.0.0.1 pebble.lab.test\n")
    with host.path("/etc/letsencrypt/cli.ini").open("a") as f:
        f.write("work-dir = /run/letsencrypt-work\n")
    host.exec("(cd /tmp && PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 exec setsid /usr/bin/pebble "
              "-config /etc/pebble/config.json) </dev/null >/tmp/pebble.log 2>&1 &")
    for _ in range(100):
        if host.exec(f"curl -sf --cacert {CA_BUNDLE} {DIRECTORY}", check=False).returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError("pebble did not answer: " + host.path("/tmp/pebble.log").read_text()[-2000:])


def issuing_root(host, dest: Path) -> Path:
    """The root pebble signs with (what a client of the site trusts), saved locally at `dest`."""
    res = host.exec(f"curl -sf --cacert {CA_BUNDLE} https://localhost:15000/roots/0")
    dest.write_text(res.stdout)
    return dest
