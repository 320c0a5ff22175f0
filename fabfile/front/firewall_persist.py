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


TARGETS = ("sysinit.target", "multi-user.target")  # where nftables.service's [Install] WantedBy points


def persist_commands(table: str, staged: str, cand: str) -> dict[str, str]:
    """The root commands of persist_lines and enable_lines (fixed: the drop-in of fab sudoers lists them)."""
    d = table_file(table)
    c = {"mkdir": root.root("install", "-d", "-m", "0755", NFT_DIR), "rm_old": root.rm(d + ".fabdeploy-old"),
         "keep_old": root.root("cp", "-p", d, d + ".fabdeploy-old"),
         "install": root.install(staged, d + ".fabdeploy-tmp"), "rename": root.root("mv", "-f", d + ".fabdeploy-tmp", d),
         "check_conf": root.root("nft", "-c", "-f", NFT_CONF), "check_cand": root.root("nft", "-c", "-f", cand),
         "restore": root.root("mv", "-f", d + ".fabdeploy-old", d), "rm": root.rm(d),
         "install_conf": root.install(cand, NFT_CONF + ".fabdeploy-tmp", mode="0755"),
         "rename_conf": root.root("mv", "-f", NFT_CONF + ".fabdeploy-tmp", NFT_CONF),
         "is_enabled": root.root("systemctl", "is-enabled", "--quiet", "nftables.service"),
         "enable": root.root("systemctl", "enable", "--quiet", "nftables.service")}
    for t in TARGETS:
        c[f"wants {t}"] = root.root("install", "-d", "-m", "0755", f"/etc/systemd/system/{t}.wants")
        for u in UNIT_DIRS:
            c[f"link {u} {t}"] = root.root("ln", "-sf", f"{u}/nftables.service",
                                           f"/etc/systemd/system/{t}.wants/nftables.service")
    return c


def persist_lines(table: str, staged: str, cand: str) -> list[str]:
    """Install the staged table script (staged: its fixed path) for the boot, with nftables.conf including it
    and nftables.service enabled. cand: the deploy user's fixed path for the candidate nftables.conf.
    nftables.conf is read without sudo (world-readable on Debian) and installed 0755 (Debian's mode)."""
    d, conf, qcand = q(table_file(table)), q(NFT_CONF), q(cand)
    c = persist_commands(table, staged, cand)
    included = f"grep -qsE {q(INCLUDE_RE)} {conf}"
    header = "# Added by fabdeploy: the tables of /etc/nftables.d (fabdeploy_<project>.nft: an app port's firewall)"
    return [
        "fw_file=; fw_conf=",
        f"if ! cmp -s {q(staged)} {d}; then",
        f"  {c['mkdir']}",
        f"  {c['rm_old']}; if [ -e {d} ]; then {c['keep_old']}; fi",
        f"  {c['install']} && {c['rename']}",
        "  fw_file=changed",
        "fi",
        f"if ! {included}; then",
        f"  if [ -e {conf} ]; then cat {conf} > {qcand} || "
        + fail(f"cannot read {NFT_CONF} (it must be readable by the deploy user)")
        + f"; else printf '#!/usr/sbin/nft -f\\n' > {qcand}; fi",
        f"  printf '\\n%s\\n%s\\n' {q(header)} {q(INCLUDE)} >> {qcand}",
        "  fw_conf=changed",
        "fi",
        'if [ -n "$fw_file$fw_conf" ]; then',
        f'  fw_ok=1; if [ -z "$fw_conf" ]; then out=$({c["check_conf"]} 2>&1) || fw_ok=; '
        f'else out=$({c["check_cand"]} 2>&1) || fw_ok=; fi',
        '  if [ -z "$fw_ok" ]; then',
        f"    if [ -e {d}.fabdeploy-old ]; then {c['restore']}; "
        f'elif [ -n "$fw_file" ]; then {c["rm"]}; fi',
        "    printf '%s\\n' \"$out\" >&2",
        "    " + fail(f"{NFT_CONF} with {table_file(table)} does not load (nft -c -f): the firewall table is live "
                      f"but would not come back after a reboot; {table_file(table)} was put back as it was: fix "
                      f"{NFT_CONF}"),
        "  fi",
        f"  {c['rm_old']}",
        '  if [ -n "$fw_conf" ]; then',
        f"    {c['install_conf']} && {c['rename_conf']} && "
        + note(f"{NFT_CONF} now includes {NFT_DIR}/*.nft"),
        "  fi",
        '  [ -z "$fw_file" ] || ' + note(f"nftables table inet {table} saved in {table_file(table)} (loaded at boot)"),
        "fi",
        *enable_lines(c),
    ]


def enable_lines(c: dict[str, str]) -> list[str]:
    """nftables.service enabled, so the boot loads /etc/nftables.conf (nothing done when it is); a host
    without the unit gets a warning line. (c: persist_commands)"""
    units = " ".join(f"{u}/nftables.service" for u in UNIT_DIRS)
    gone = warn("nftables.service is not installed on this host: the firewall table will not be loaded at boot "
                "(apt-get install nftables)")
    links = [f'    if [ "$fw_unit" = {q(u + "/nftables.service")} ] && [ "$fw_want" = {t} ]; then '
             f'{c["wants " + t]} && {c[f"link {u} {t}"]} && fw_linked=1; fi'
             for t in TARGETS for u in UNIT_DIRS]
    return [
        "if [ -d /run/systemd/system ]; then",
        f"  if ! {c['is_enabled']} 2>/dev/null; then",
        f"    {c['enable']} || "
        + fail_expanded("systemctl enable nftables.service failed"),
        "    " + note("nftables.service enabled (loads /etc/nftables.conf at boot)"),
        "  fi",
        "else",
        f'  fw_unit=; for u in {units}; do [ -e "$u" ] && {{ fw_unit=$u; break; }}; done',
        '  if [ -z "$fw_unit" ]; then',
        "    " + gone,
        "  else",
        '    fw_want=$(sed -n "s/^WantedBy=[[:space:]]*\\([^[:space:]]*\\).*/\\1/p" "$fw_unit" | head -n 1)',
        '    fw_want=${fw_want:-sysinit.target}; fw_link=/etc/systemd/system/$fw_want.wants/nftables.service',
        '    if [ ! -e "$fw_link" ]; then',
        "    fw_linked=",
        *links,
        '    if [ -n "$fw_linked" ]; then ' + note("nftables.service enabled (loads /etc/nftables.conf at boot)") + "; else "
        + warn("nftables.service is wanted by a target fabdeploy does not link (only " + ", ".join(TARGETS)
             + "): enable it yourself") + "; fi",
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
