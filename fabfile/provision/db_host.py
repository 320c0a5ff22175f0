"""`fab provision` on the fleet's db host (roles.db, database/fleet.py): what differs from a server on the app
host itself (provision/database.py, provision/redis.py).

    postgresql-access  listen_addresses = 'localhost,<db address>' (ALTER SYSTEM: postgresql.auto.conf, any
                       family) and a block of pg_hba.conf (the file the server names: SHOW hba_file) with one
                       `host <db> <user> <app address> scram-sha-256` line per app host, between
                       `# BEGIN fabdeploy <db>` / `# END fabdeploy <db>`; then the server restarted. Any
                       other address finds no pg_hba.conf entry: refused.
    mysql-access       bind-address = 127.0.0.1,<db address> in a drop-in of the server's configuration
                       (Debian: /etc/mysql/mariadb.conf.d/70-fabdeploy.cnf, read after 50-server.cnf's
                       127.0.0.1; RHEL family: /etc/my.cnf.d/fabdeploy.cnf; MariaDB 10.11+ takes a list),
                       then the server restarted; the user @ each app address
                       (provision/database.mysql_database_step's accounts).
    Redis              bound to 127.0.0.1 and the db address (provision/redis.config_step), its password
                       required.
    db-firewall        ([balancer] firewall not "off") an nftables table fabdeploy_db_<project>: the
                       database's and Redis' ports open to the app hosts and the host itself only (others
                       get a TCP reset), in /etc/nftables.d/ included by /etc/nftables.conf (kept at boot).
"""
from __future__ import annotations

from fabdeploy import database
from fabdeploy.config import Config, ident
from fabdeploy.database import fleet
from fabdeploy.provision.services import SYSTEMD
from fabdeploy.provision.steps import Step
from fabdeploy.front.firewall_persist import INCLUDE, INCLUDE_RE, NFT_CONF, NFT_DIR
from fabdeploy.remote.shell import q

PSQL = "runuser -u postgres -- psql -X -q -tA -v ON_ERROR_STOP=1 -d postgres"


def hba_block(cfg: Config) -> str:
    """The pg_hba.conf lines of this project's fleet (no trailing newline)."""
    name, user = database.db_name(cfg), database.db_user(cfg)
    lines = [f"# BEGIN fabdeploy {name} (the app hosts of the fleet; managed by fab provision)"]
    lines += [f"host {name} {user} {fleet.cidr(a)} scram-sha-256" for a in fleet.app_addresses(cfg)]
    return "\n".join([*lines, f"# END fabdeploy {name}"])


def listen_addresses(cfg: Config) -> str:
    return f"localhost,{fleet.address(cfg)}"


def _restart(family: str) -> str:
    if family == "apt":
        return 'set -- $(pg_lsclusters -h | head -n 1); pg_ctlcluster "$1" "$2" restart'
    from fabdeploy.provision.database import PG_RH_DATA
    return (f"if {SYSTEMD}; then systemctl restart postgresql; "
            f"else runuser -u postgres -- pg_ctl -D {PG_RH_DATA} -w restart >/dev/null; fi")


def pg_access_step(cfg: Config, family: str) -> Step:
    """The server listens on the db address and lets in only the app hosts (for this database and user)."""
    from fabdeploy.provision.database import PG_READY, _wait
    name = database.db_name(cfg)
    begin, end = f"# BEGIN fabdeploy {name} ", f"# END fabdeploy {name}"
    common = [f"block={q(hba_block(cfg))}", f"want={q(listen_addresses(cfg))}",
              f"hba=$({PSQL} -c 'SHOW hba_file')", '[ -f "$hba" ]']
    check = [*common, f"[ \"$({PSQL} -c 'SHOW listen_addresses')\" = \"$want\" ]",
             f"[ \"$(sed -n '/^{begin}/,/^{end}$/p' \"$hba\")\" = \"$block\" ]"]
    apply = [*common,
             f"printf \"ALTER SYSTEM SET listen_addresses = '%s';\\n\" \"$want\" | {PSQL} >/dev/null",
             f"{{ sed '/^{begin}/,/^{end}$/d' \"$hba\"; printf '%s\\n' \"$block\"; }} > \"$hba.fabdeploy-tmp\"",
             'cat "$hba.fabdeploy-tmp" > "$hba"', 'rm -f "$hba.fabdeploy-tmp"',  # (keeps owner and mode)
             _restart(family) + " >/dev/null", *_wait(PG_READY, "PostgreSQL")]
    apps = ", ".join(fleet.app_addresses(cfg))
    return Step("postgresql-access", check, apply,
                what=f"PostgreSQL listens on {fleet.address(cfg)}, database {name} open to {apps} only")


MYSQL_CNF = {"apt": "/etc/mysql/mariadb.conf.d/70-fabdeploy.cnf"}
MYSQL_CNF_RH = "/etc/my.cnf.d/fabdeploy.cnf"


def mysql_cnf(cfg: Config, bind: str = "$bind") -> str:
    """The drop-in's text: the server listens on `bind` (the shell word set by mysql_bind_lines: localhost
    and the db address where the server takes a list, else the db address alone)."""
    return f"# fabdeploy: the fleet's database host (managed by fab provision)\n[mysqld]\nbind-address = {bind}"


def mysql_bind_lines(cfg: Config) -> list[str]:
    """Set $bind: `127.0.0.1,<db address>` where the server takes a list of addresses (MariaDB 10.11+,
    MySQL 8), else `<db address>` alone (MariaDB 10.3-10.6 of RHEL 8/9 and Ubuntu 22.04 would not start with
    a list; local tools use the unix socket)."""
    addr = q(fleet.address(cfg))
    return [
        "v=$({ mariadbd --version || mysqld --version || /usr/sbin/mariadbd --version || /usr/sbin/mysqld --version; } "
        "2>/dev/null | grep -o 'Ver [0-9]*\\.[0-9]*' | head -n 1 | cut -d' ' -f2)",
        f'case "$v" in 10.[0-9]|10.10|5.*|"") bind={addr};; *) bind=127.0.0.1,{addr};; esac',
    ]


def mysql_access_step(cfg: Config, family: str) -> Step:
    """MariaDB listens on the db address too (the app hosts' accounts come with the database step)."""
    from fabdeploy.provision.database import MYSQL_CLIENT, MYSQL_READY, _wait, mysql_start_lines
    f = MYSQL_CNF.get(family, MYSQL_CNF_RH)
    admin = "$(command -v mariadb-admin || echo mysqladmin)"
    want = [*mysql_bind_lines(cfg), f'want="{mysql_cnf(cfg)}"']
    check = [*want, f'[ "$(cat {q(f)} 2>/dev/null)" = "$want" ]',
             f"[ \"$({MYSQL_CLIENT} -N -e 'SELECT @@bind_address' 2>/dev/null)\" = \"$bind\" ]"]
    apply = [*want, f"install -d -m 755 {q(f.rsplit('/', 1)[0])}",
             f"printf '%s\\n' \"$want\" > {q(f + '.tmp')}", f"chmod 644 {q(f + '.tmp')}", f"mv -f {q(f + '.tmp')} {q(f)}",
             f"if {SYSTEMD}; then systemctl restart mariadb", "else",
             f"  {admin} shutdown >/dev/null 2>&1 || true",
             f"  i=0; while {MYSQL_READY} || [ -e /run/mysqld/mysqld.sock ]; do i=$((i+1)); [ $i -le 120 ] || "
             "{ echo 'MariaDB did not stop within 60s'; exit 1; }; sleep 0.5; done",
             *mysql_start_lines(), "fi", *_wait(MYSQL_READY, "MariaDB")]
    return Step("mysql-access", check, apply, what=f"MariaDB listens on {fleet.address(cfg)} ({f})")


def mysql_accounts(cfg: Config, role: str) -> list[str]:
    """The hosts of the MariaDB user: the db host's own (the provision check logs in locally), and on a db
    host each app host's address."""
    own = ["localhost", "127.0.0.1"]
    return own + (fleet.app_addresses(cfg) if role == fleet.ROLE else [])


def firewalled(cfg: Config) -> bool:
    return cfg.balancer.firewall != "off"


def ports(cfg: Config) -> list[int]:
    """The db host's ports the app hosts use: the database server's and Redis'."""
    out = [database.PORTS[cfg.database.engine]] if cfg.database.engine in database.PORTS else []
    return out + ([6379] if cfg.cache.redis else [])


def firewall_table(cfg: Config) -> tuple[str, str]:
    """(table, nft script replacing it atomically): ports() open to the app hosts (IP literals; host names
    are resolved by nft when it loads the table) and to the host itself, a TCP reset for anyone else."""
    table = "fabdeploy_db_" + ident(cfg.project.name)
    dport = "tcp dport { " + ", ".join(map(str, ports(cfg))) + " }"
    v4 = [a for a in fleet.app_addresses(cfg) if ":" not in a]
    v6 = [a for a in fleet.app_addresses(cfg) if ":" in a]
    rules = [f"{dport} fib saddr type local accept"]
    rules += [f"{dport} ip saddr {{ {', '.join(v4)} }} accept"] if v4 else []
    rules += [f"{dport} ip6 saddr {{ {', '.join(v6)} }} accept"] if v6 else []
    rules.append(f"{dport} reject with tcp reset")
    body = "\n".join(f"    {r}" for r in rules)
    return table, (f"add table inet {table}\ndelete table inet {table}\ntable inet {table} {{\n"
                   f"  chain input {{\n    type filter hook input priority 0; policy accept;\n{body}\n  }}\n}}")


def firewall_steps(cfg: Config) -> list[Step]:
    """db-firewall on the db host (none with balancer.firewall = "off")."""
    if not firewalled(cfg) or not ports(cfg):
        return []
    table, script = firewall_table(cfg)
    f = f"{NFT_DIR}/{table}.nft"
    common = [f"want={q(script)}"]
    check = [*common, f'[ "$(cat {q(f)} 2>/dev/null)" = "$want" ]', f"nft list table inet {table} >/dev/null 2>&1",
             f"grep -Eqs {q(INCLUDE_RE)} {NFT_CONF}"]
    apply = [*common, f"install -d -m 0755 {NFT_DIR}",
             f"printf '%s\\n' \"$want\" > {q(f + '.tmp')}", f"nft -c -f {q(f + '.tmp')}", f"nft -f {q(f + '.tmp')}",
             f"mv -f {q(f + '.tmp')} {q(f)}",
             f"[ -f {NFT_CONF} ] || printf '#!/usr/sbin/nft -f\\n' > {NFT_CONF}",
             f"grep -Eqs {q(INCLUDE_RE)} {NFT_CONF} || printf '%s\\n' {q(INCLUDE)} >> {NFT_CONF}",
             f"if {SYSTEMD}; then systemctl enable nftables >/dev/null 2>&1 || true; fi"]
    apps = ", ".join(fleet.app_addresses(cfg))
    return [Step("db-firewall", check, apply,
                 what=f"nftables: port {', '.join(map(str, ports(cfg)))} open to {apps} only (table {table})")]
