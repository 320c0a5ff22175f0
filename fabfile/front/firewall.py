"""The app server's port of an app host behind load balancers: who may reach it, and whether it is free.

Shell-line builders for the setup and config phases (nothing live changes there):
- the balancers' addresses as the app host sees them: IP literals as they are, host names resolved on the
  app host (`getent ahosts`, IPv4 and IPv6) into `ip saddr` / `ip6 saddr` rules; a name that does not
  resolve stops the deploy naming it;
- the port must not be in use by another program (only this site's app server may hold it).
"""
from __future__ import annotations

import ipaddress

from fabdeploy import appserver
from fabdeploy.config import Config, ident
from fabdeploy.front import firewall_persist
from fabdeploy.hosts.layout import Layout
from fabdeploy.hosts.roles import Server, balanced, servers
from fabdeploy.remote import root
from fabdeploy.remote.markers import fail, note, warn
from fabdeploy.remote.shell import AS_APP, q, write_file


def lb_sources(cfg: Config) -> tuple[list[str], list[str], list[str]]:
    """(IPv4 literals, IPv6 literals, host names) of the load balancers, as the app hosts see them."""
    v4, v6, names = [], [], []
    for s in servers(cfg):
        if s.role != "lb":
            continue
        addr = s.upstream_address.strip("[]")
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            names.append(addr)
            continue
        (v4 if ip.version == 4 else v6).append(str(ip))
    dedup = lambda xs: list(dict.fromkeys(xs))  # noqa: E731
    return dedup(v4), dedup(v6), dedup(names)


def resolved_rules(cfg: Config, table: str, nft_file: str) -> list[str]:
    """Append to nft_file the accept rules of the balancers named by host name, resolved here and now (nft
    would resolve a name itself, once, IPv4 only). Nothing when every balancer is given as an address."""
    title = appserver.of(cfg).title
    names = lb_sources(cfg)[2]
    if not names:
        return []
    port = cfg.balancer.port
    lines = ["fw_addrs="]
    for name in names:
        lines += [
            f"a=$(getent ahosts {q(name)} | awk '{{print $1}}' | sort -u) || true",
            '[ -n "$a" ] || ' + fail(f"load balancer {name} does not resolve on this host (getent ahosts "
                                     f"{name}): its firewall could not let it in to {title} port {port}; give "
                                     "its address in roles.lb (address = ...) or fix the name"),
            'fw_addrs="$fw_addrs $a"',
        ]
    rule = f"insert rule inet {table} input tcp dport {port}"
    lines += [
        "fw4=$(printf '%s\\n' $fw_addrs | grep -v : | sort -u | paste -sd, -)",
        "fw6=$(printf '%s\\n' $fw_addrs | grep : | sort -u | paste -sd, -)",
        f"[ -z \"$fw4\" ] || printf '{rule} ip saddr {{ %s }} accept\\n' \"$fw4\" >> {q(nft_file)}",
        f"[ -z \"$fw6\" ] || printf '{rule} ip6 saddr {{ %s }} accept\\n' \"$fw6\" >> {q(nft_file)}",
        note("load balancer names resolved here: $(printf '%s' \"${fw4:+$fw4${fw6:+,}}$fw6\" | sed 's/,/, /g')"),
    ]
    return lines


def port_free(cfg: Config) -> list[str]:
    """Refuse balancer.port when a program other than this site's app server listens on it (any address, IPv4 or
    IPv6). The listening sockets come from /proc/net/tcp{,6} (visible to any user); ours are those the app
    master of shared/run/uwsgi.pid holds open (our own process: readable without root). The other program is
    named when `ss -p` can see it (with sudo -n when allowed), else the user owning the socket."""
    port = cfg.balancer.port
    app = appserver.of(cfg)
    pidfile = app.paths(Layout(cfg.paths.deploy_to)).pidfile
    sel = q(f"sport = :{port}")
    users_sed = q(r's/.*users:(("\([^"]*\)",pid=\([0-9]*\).*/\1 (pid \2)/p')
    return [
        f"fw_listen=$(awk -v p=':{port:04X}' '$4 == \"0A\" && substr($2, length($2) - 4) == p "
        "{ print $10 \":\" $8 }' /proc/net/tcp /proc/net/tcp6 2>/dev/null || true)",
        'if [ -n "$fw_listen" ]; then',
        *["  " + ln for ln in app.as_app_lines(cfg)],  # (the master's pidfile and fds are the app user's)
        f"  mpid=$({AS_APP} cat {q(pidfile)} 2>/dev/null | tr -dc 0-9)",
        f'  if [ -z "$mpid" ] || ! grep -qs {app.process} "/proc/$mpid/comm"; then mpid=; fi',
        "  for l in $fw_listen; do",
        '    ino=${l%%:*}; uid=${l#*:}',
        f'    if [ -n "$mpid" ] && {AS_APP} ls -l "/proc/$mpid/fd" 2>/dev/null | grep -q "socket:\\[$ino\\]"; then continue; fi',
        f"    who=$({{ sudo -n ss -ltnpeH {sel} 2>/dev/null || ss -ltnpeH {sel} 2>/dev/null; }} "
        f"| grep \"ino:$ino \" | sed -n {users_sed} | head -n 1)",
        '    u=$(getent passwd "$uid" | cut -d: -f1); [ -n "$who" ] || who="a program of user ${u:-$uid}"',
        "    " + fail(f"balancer.port {port} is in use on this host by ",
                    then='"$who"' + q(f", not by this site's {app.title}: choose another balancer.port")),
        "  done",
        "fi",
    ]


def port_check(cfg: Config, server: Server | None) -> list[str]:
    """port_free on an app host behind load balancers (for its setup phase, right after the lock is taken:
    before anything is uploaded, migrated or changed); nothing elsewhere."""
    if server is None or server.role != "app" or not balanced(cfg):
        return []
    return port_free(cfg)


def firewall_rules(cfg: Config) -> tuple[str, str]:
    """(table name, nft script): the app server's port of an app host open to the load balancers and the host
    itself only (others get a TCP reset). The script replaces the table atomically (`nft -f`); balancers
    given by host name get their rules on the host (firewall.resolved_rules)."""
    table = "fabdeploy_" + ident(cfg.project.name)
    port = cfg.balancer.port
    v4, v6, _ = lb_sources(cfg)  # (balancers given by name: resolved on the host, see firewall())
    rules = [f"tcp dport {port} fib saddr type local accept"]
    if v4:
        rules.append(f"tcp dport {port} ip saddr {{ {', '.join(v4)} }} accept")
    if v6:
        rules.append(f"tcp dport {port} ip6 saddr {{ {', '.join(v6)} }} accept")
    rules.append(f"tcp dport {port} reject with tcp reset")
    body = "\n".join(f"    {r}" for r in rules)
    return table, (f"add table inet {table}\ndelete table inet {table}\ntable inet {table} {{\n"
                   f"  chain input {{\n    type filter hook input priority 0; policy accept;\n{body}\n  }}\n}}\n")



def _firewalled(cfg: Config, server: Server | None) -> bool:
    return cfg.balancer.firewall != "off" and server is not None and server.role == "app" and balanced(cfg)



def staged_paths(cfg: Config) -> tuple[str, str]:
    """(the table's script, the candidate nftables.conf): the fixed paths under shared/config where the deploy
    user stages what root's nft checks and loads (a drop-in can list fixed paths only)."""
    config = Layout(cfg.paths.deploy_to).config
    return f"{config}/firewall.nft", f"{config}/nftables.conf"


def _legacy(cfg: Config) -> str:
    return "fabdeploy_" + "".join(c if c.isalnum() or c == "_" else "_" for c in cfg.project.name)


def root_lines(cfg: Config) -> list[str]:
    """Every root command of the firewall's check, apply and persist (the drop-in of fab sudoers lists them)."""
    table = firewall_rules(cfg)[0]
    staged, cand = staged_paths(cfg)
    return [root.root("nft", "--version"), root.root("nft", "-c", "-f", staged), root.root("nft", "-f", staged),
            root.root("nft", "list", "table", "inet", _legacy(cfg)),
            root.root("nft", "delete", "table", "inet", _legacy(cfg)),
            *firewall_persist.persist_commands(table, staged, cand).values()]


def firewall(cfg: Config, server: Server | None, staging: str) -> list[str]:
    """Config phase of an app host behind load balancers: stage the nftables rules that restrict the app server's
    port (balancer.firewall) and have nft check them; firewall_apply makes them live at the switch."""
    title = appserver.of(cfg).title
    mode = cfg.balancer.firewall
    if not _firewalled(cfg, server):
        return []
    table, rules = firewall_rules(cfg)
    lbs = ", ".join(s.upstream_address for s in servers(cfg) if s.role == "lb")
    missing = (fail("balancer.firewall = \"nftables\" but nft is not usable with sudo on this host "
                    "(apt-get install nftables)") if mode == "nftables" else
               warn(f"{title} port {cfg.balancer.port} is open to every host that can reach it: nft not found "
                    "(install nftables, or restrict it yourself: see the README)"))
    staged = staged_paths(cfg)[0]
    return [
        f"if {root.root('nft', '--version')} >/dev/null 2>&1; then",
        *["  " + ln for ln in write_file(f"{staging}/firewall.nft", rules)],
        *["  " + ln for ln in resolved_rules(cfg, table, f"{staging}/firewall.nft")],
        f"  cp {q(staging + '/firewall.nft')} {q(staged)}",
        f"  out=$({root.root('nft', '-c', '-f', staged)} 2>&1) || {{ printf '%s\\n' \"$out\" >&2; "
        + fail(f"nftables refused the firewall rules for the {title} port") + "; }",
        "  " + note(f"{title} port {cfg.balancer.port} will be open to {lbs} only (nftables table inet {table}, "
                    "applied at the switch)"),
        "else",
        "  " + missing,
        "fi",
    ]



def firewall_apply(cfg: Config, server: Server | None, staging: str) -> list[str]:
    """Switch phase: make the staged firewall rules live (atomically: `nft -f` replaces the table), drop the
    table an older fabdeploy named less exactly (when it guards this port), and save the table for the boot
    (firewall_persist)."""
    title = appserver.of(cfg).title
    if not _firewalled(cfg, server):
        return []
    table = firewall_rules(cfg)[0]
    legacy = _legacy(cfg)
    F = q(staging + "/firewall.nft")
    staged, cand = staged_paths(cfg)
    lines = [f"if [ -f {F} ]; then",
             f"  cp {F} {q(staged)}",
             f"  out=$({root.root('nft', '-f', staged)} 2>&1) || {{ printf '%s\\n' \"$out\" >&2; "
             + fail(f"nftables refused the firewall rules for the {title} port") + "; }"]
    if legacy != table:
        lines.append(f"  if {root.root('nft', 'list', 'table', 'inet', legacy)} 2>/dev/null | "
                     f"grep -q 'dport {cfg.balancer.port} '; then {root.root('nft', 'delete', 'table', 'inet', legacy)}; fi")
    lines.append("  " + note(f"{title} port {cfg.balancer.port}: nftables table inet {table} applied"))
    persist = firewall_persist.persist_lines(table, staged, cand)
    return lines + ["  " + ln for ln in persist] + ["fi"]


def firewall_unused(cfg: Config, server: Server | None) -> list[str]:
    """Switch phase of an app host that does not use the firewall (balancer.firewall = "off", or no balancers
    any more): a table fabdeploy saved for the boot earlier is removed, and the live one with it. (A balancer
    has no switch phase.)"""
    if _firewalled(cfg, server) or (server is not None and server.role == "lb"):
        return []
    return firewall_persist.remove_lines(firewall_rules(cfg)[0])
