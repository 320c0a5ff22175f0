"""The app port's nftables table kept across reboots, the Debian way (firewall.firewall_apply calls these in
the switch phase, right after the table went live):

- the table's script installed as root in /etc/nftables.d/fabdeploy_<project>.nft (the same file the config
  phase checked, with balancer names already resolved: nothing is looked up at boot);
- /etc/nftables.conf including that directory: `include "/etc/nftables.d/*.nft"` appended once when no line
  includes it, never dropping what is there; the result is checked with `nft -c -f` before it is installed,
  and the project's file is put back as it was when the check fails;
- nftables.service enabled (it loads /etc/nftables.conf at boot): `systemctl enable` where systemd runs,
  else the link its package would create in /etc/systemd/system/<WantedBy>.wants/.

Nothing is rewritten when unchanged; files are replaced atomically (a temp file renamed over). A host that no
longer uses the firewall (balancer.firewall = "off", no longer a balanced app host) gets both the file and
the live table removed (remove_lines).
"""
from __future__ import annotations

from fabdeploy.remote import root
from fabdeploy.remote.markers import fail, fail_expanded, note, warn
from fabdeploy.remote.shell import q

NFT_DIR = "/etc/nftables.d"
NFT_CONF = "/etc/nftables.conf"
INCLUDE = f'include "{NFT_DIR}/*.nft"'
INCLUDE_RE = r'^[[:space:]]*include[[:space:]]+"/etc/nftables\.d/\*\.nft"'  # (an ERE for grep -E)
UNIT_DIRS = ("/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system")


def table_file(table: str) -> str:
    """Where a table's script lives (named after the table: one file per project)."""
    return f"{NFT_DIR}/{table}.nft"


def persist_lines(table: str, staged: str, staging: str) -> list[str]:
    """Install the staged table script (staged: its path) for the boot, with nftables.conf including it and
    nftables.service enabled. staging: a directory of the deploy user's for the candidate nftables.conf."""
    d, conf, cand = q(table_file(table)), q(NFT_CONF), q(f"{staging}/nftables.conf")
    included = f"sudo -n grep -qsE {q(INCLUDE_RE)} {conf}"
    header = "# Added by fabdeploy: the tables of /etc/nftables.d (fabdeploy_<project>.nft: an app port's firewall)"
    return [
        "fw_file=; fw_conf=",
        f"if ! cmp -s {q(staged)} {d}; then",
        f"  sudo -n install -d -m 0755 {q(NFT_DIR)}",
        f"  sudo -n rm -f {d}.fabdeploy-old; if [ -e {d} ]; then sudo -n cp -p {d} {d}.fabdeploy-old; fi",
        f"  sudo -n install -m 0644 {q(staged)} {d}.fabdeploy-tmp && sudo -n mv -f {d}.fabdeploy-tmp {d}",
        "  fw_file=changed",
        "fi",
        f"if ! {included}; then",
        f"  if sudo -n test -e {conf}; then sudo -n cat {conf} > {cand} || "
        + fail(f"cannot read {NFT_CONF} (sudo -n cat)") + f"; else printf '#!/usr/sbin/nft -f\\n' > {cand}; fi",
        f"  printf '\\n%s\\n%s\\n' {q(header)} {q(INCLUDE)} >> {cand}",
        "  fw_conf=changed",
        "fi",
        'if [ -n "$fw_file$fw_conf" ]; then',
        f"  fw_check={conf}; [ -z \"$fw_conf\" ] || fw_check={cand}",
        '  if ! out=$(sudo -n nft -c -f "$fw_check" 2>&1); then',
        f"    if [ -e {d}.fabdeploy-old ]; then sudo -n mv -f {d}.fabdeploy-old {d}; "
        f'elif [ -n "$fw_file" ]; then sudo -n rm -f {d}; fi',
        "    printf '%s\\n' \"$out\" >&2",
        "    " + fail(f"{NFT_CONF} with {table_file(table)} does not load (nft -c -f): the firewall table is live "
                      f"but would not come back after a reboot; {table_file(table)} was put back as it was: fix "
                      f"{NFT_CONF}"),
        "  fi",
        f"  sudo -n rm -f {d}.fabdeploy-old",
        '  if [ -n "$fw_conf" ]; then',
        f"    mode=$(stat -c %a {conf} 2>/dev/null || echo 755)",
        f'    sudo -n install -m "$mode" {cand} {conf}.fabdeploy-tmp && sudo -n mv -f {conf}.fabdeploy-tmp {conf} && '
        + note(f"{NFT_CONF} now includes {NFT_DIR}/*.nft"),
        "  fi",
        '  [ -z "$fw_file" ] || ' + note(f"nftables table inet {table} saved in {table_file(table)} (loaded at boot)"),
        "fi",
        *enable_lines(),
    ]


def enable_lines() -> list[str]:
    """nftables.service enabled, so the boot loads /etc/nftables.conf (nothing done when it is); a host
    without the unit gets a warning line."""
    units = " ".join(f"{u}/nftables.service" for u in UNIT_DIRS)
    gone = warn("nftables.service is not installed on this host: the firewall table will not be loaded at boot "
                "(apt-get install nftables)")
    return [
        "if [ -d /run/systemd/system ]; then",
        "  if ! sudo -n systemctl is-enabled --quiet nftables.service 2>/dev/null; then",
        "    sudo -n systemctl enable --quiet nftables.service || "
        + fail_expanded("systemctl enable nftables.service failed"),
        "    " + note("nftables.service enabled (loads /etc/nftables.conf at boot)"),
        "  fi",
        "else",
        f'  fw_unit=; for u in {units}; do [ -e "$u" ] && {{ fw_unit=$u; break; }}; done',
        '  if [ -z "$fw_unit" ]; then',
        "    " + gone,
        "  else",
        '    fw_want=$(sed -n "s/^WantedBy=[[:space:]]*\\([^[:space:]]*\\).*/\\1/p" "$fw_unit" | head -n 1)',
        '    fw_link=/etc/systemd/system/${fw_want:-sysinit.target}.wants/nftables.service',
        '    if [ ! -e "$fw_link" ]; then',
        '      sudo -n install -d -m 0755 "${fw_link%/*}" && sudo -n ln -sf "$fw_unit" "$fw_link" && '
        + note("nftables.service enabled (loads /etc/nftables.conf at boot)"),
        "    fi",
        "  fi",
        "fi",
    ]


def remove_commands(table: str) -> dict[str, str]:
    """The root commands of remove_lines (every config may run them: the drop-in lists them)."""
    return {"rm": root.rm(table_file(table)), "list": root.root("nft", "list", "table", "inet", table),
            "delete": root.root("nft", "delete", "table", "inet", table)}


def remove_lines(table: str) -> list[str]:
    """Where the firewall is no longer used: the saved table's file removed, and the live table with it
    (nothing done, and nothing asked of sudo, when there is no such file)."""
    d = q(table_file(table))
    c = remove_commands(table)
    return [f"if [ -e {d} ]; then",
            f"  {c['rm']}",
            f"  if {c['list']} >/dev/null 2>&1; then {c['delete']}; fi",
            "  " + note(f"firewall no longer used here: {table_file(table)} removed, table inet {table} deleted"),
            "fi"]
