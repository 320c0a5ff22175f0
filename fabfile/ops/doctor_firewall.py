"""`fab doctor`'s firewall rule: does the host's nftables ruleset (`nft list ruleset`; iptables-nft rules
appear there too) let a new TCP connection from anywhere reach the nginx site's ports? Every base chain on
the input hook must accept it: the first rule that matches such a packet decides, else the chain's policy."""
from __future__ import annotations

import re

from fabdeploy.ops.doctor_rules import Finding, site_listen_ports

# rule words that restrict a rule to some packets only: such a rule does not decide for "any new connection"
_NARROW = ("saddr", "iif", "oif", "ct state", "ct status", "udp", "icmp", "meta l4proto", "mark", "daddr",
           "fib saddr", "limit rate", "sport")


def input_chains(ruleset: str) -> list[dict]:
    """The base chains on the input hook: {"table", "chain", "policy", "rules": [rule text]}."""
    out, table, chain = [], "", None
    for raw in ruleset.splitlines():
        ln = raw.strip()
        m = re.match(r"^table\s+(\S+\s+\S+)\s*\{", ln)
        if m:
            table = m.group(1)
            continue
        m = re.match(r"^chain\s+(\S+)\s*\{", ln)
        if m:
            chain = {"table": table, "chain": m.group(1), "policy": "accept", "rules": [], "input": False}
            out.append(chain)
            continue
        if chain is None or not ln or ln == "}":
            continue
        m = re.match(r"^type\s+filter\s+hook\s+(\w+)\s+priority\s+[^;]+;(?:\s*policy\s+(\w+);)?", ln)
        if m:
            chain["input"] = m.group(1) == "input"
            chain["policy"] = m.group(2) or "accept"
            continue
        chain["rules"].append(ln)
    return [c for c in out if c["input"]]


def _ports(rule: str) -> list[tuple[int, int]] | None:
    """The (low, high) port ranges of a rule's `tcp dport`, None when it has none."""
    m = re.search(r"\btcp\s+dport\s+(\{[^}]*\}|\S+)", rule)
    if not m:
        return None
    out = []
    for word in re.split(r"[\s,{}]+", m.group(1)):
        lo, _, hi = word.partition("-")
        if lo.isdigit():
            out.append((int(lo), int(hi) if hi.isdigit() else int(lo)))
    return out


def verdict(chain: dict, port: int) -> str:
    """What the chain does with a new TCP connection to `port` from any address: accept, drop or reject."""
    for rule in chain["rules"]:
        words = re.sub(r"\bcounter(\s+packets\s+\d+\s+bytes\s+\d+)?", "", rule).split()
        if not words:
            continue
        action = words[-1] if words[-1] in ("accept", "drop", "reject") else (
            "reject" if "reject" in words else "")
        if not action or any(n in rule for n in _NARROW):
            continue
        ports = _ports(rule)
        if ports is None and (("tcp" in words) or len(words) > 2):
            continue  # (a rule on something else than the port: not decided here)
        if ports is None or any(lo <= port <= hi for lo, hi in ports):
            return action
    return chain["policy"]


def firewall(F: dict, P: dict) -> list[Finding]:
    """The host firewall drops or rejects new connections to a port of the nginx site."""
    if not P.get("nginx") or not F.get("nft") or not F.get("site"):
        return []
    out = []
    for port in site_listen_ports(F["site"], P["port"]):
        for chain in input_chains(F["nft"]):
            v = verdict(chain, port)
            if v != "accept":
                out.append(Finding("firewall", f"the host firewall {v}s new connections to port {port} (nft "
                                   f"table {chain['table']}, chain {chain['chain']}"
                                   + (f", policy {chain['policy']})" if v == chain["policy"] else ")"),
                                   f"allow it: nft add rule {chain['table']} {chain['chain']} tcp dport {port} accept "
                                   "(and in the file that loads the rules at boot)"))
                break
    return out
