"""`fab doctor`'s rules: facts written by hand (as FACTS_PY reports them) -> findings; the parameters of
every app server, manager and role; the report's format. The real facts come from tests/test_doctor_e2e.py."""
import sys

import pytest

from fabdeploy.config import parse_config
from fabdeploy.hosts.roles import Server
from fabdeploy.ops import doctor, doctor_rules, doctor_site
from fabdeploy.ops.doctor_facts import PROBE_PATH

SOCK = "/srv/shop/shared/run/uwsgi.sock"
SITE = f"""server {{
    listen 80;
    server_name shop.example www.shop.example;
    location /static/ {{
        alias /srv/shop/shared/static/current/;
    }}
    location / {{
        uwsgi_pass unix:{SOCK};
    }}
}}
"""
SS = (f"u_str LISTEN 0 100 {SOCK} 4242 * 0 users:((\"uwsgi\",pid=11,fd=3),(\"uwsgi\",pid=12,fd=3))\n"
      "tcp   LISTEN 0 511 0.0.0.0:80 0.0.0.0:* users:((\"nginx\",pid=7,fd=6))\n"
      "tcp   LISTEN 0 128 0.0.0.0:22 0.0.0.0:* users:((\"sshd\",pid=3,fd=3))\n")


def cfg(**sections):
    raw = {"project": {"name": "shop", "django_settings": "shop.settings", "wsgi": "shop.wsgi:application",
                       "python": sys.executable, "hosts": ["deploy@a.test"]},
           "paths": {"deploy_to": "/srv/shop"}, "nginx": {"server_name": "shop.example"}}
    for k, v in sections.items():
        raw.setdefault(k, {}).update(v)
    return parse_config(raw)


P = doctor.rule_params(cfg(), None, "a.test")


def healthy(**over):
    F = {"listeners": SS, "listeners_named": True, "app_pid": 11, "release": "R1", "app_log": "spawned uWSGI worker 1",
         "nginx_user": "www-data", "nginx_installed": True, "nginx_pid": 7, "nginx_test": {"rc": 0, "output": "ok"},
         "site_path": "/etc/nginx/sites-available/shop", "site": SITE, "site_enabled": True, "nginx_error_log": "",
         "socket_chain": [], "nginx_can_connect": "yes", "nginx_groups": ["www-data"],
         "static": {"alias": "/srv/shop/shared/static/current/", "exists": True, "real": "/x", "sample": "a.css",
                    "nginx_can_read": "yes"},
         "secret_files": {"/srv/shop/shared/secret_key": {"mode": "640", "owner": "deploy", "group": "shop",
                                                          "type": "regular file"}},
         "probes": [{"name": "shop.example", "path": PROBE_PATH, "status": 404, "debug_page": False},
                    {"name": "shop.example", "path": "/static/a.css", "status": 200, "debug_page": False}],
         "disk_deploy_to": {"free": 10 << 30, "total": 20 << 30}, "disk_var_log": {"free": 10 << 30, "total": 20 << 30},
         "clock_skew": 0.4}
    F.update(over)
    return F


def whats(F, params=P):
    return [f.what for f in doctor.findings(F, params)]


def test_a_healthy_host_has_no_findings():
    assert doctor.findings(healthy(), P) == []


def test_listeners_and_the_sites_pass_target_are_read():
    ls = doctor_rules.parse_listeners(SS)
    assert ls[0] == {"proto": "unix", "addr": SOCK, "port": None, "procs": [("uwsgi", 11), ("uwsgi", 12)]}
    assert ls[1]["addr"] == "0.0.0.0" and ls[1]["port"] == 80 and ls[1]["procs"] == [("nginx", 7)]
    assert doctor_rules.parse_listeners("tcp LISTEN 0 5 [::]:8000 [::]:*\n")[0]["addr"] == "::"  # (unnamed: no sudo)
    assert doctor_rules.site_upstream(SITE) == f"unix:{SOCK}"
    asgi = "upstream shop_app {\n server unix:/s.sock max_fails=0;\n}\nserver { proxy_pass http://shop_app; }"
    assert doctor_rules.site_upstream(asgi) == "unix:/s.sock"
    assert doctor_rules.site_upstream("  proxy_pass http://unix:/s.sock:;") == "unix:/s.sock"
    assert doctor_rules.site_listen_ports("listen 80;\nlisten [::]:80;\nlisten 443 ssl;", 80) == [80, 443]


def test_another_process_on_the_socket_path_or_nginx_ports_is_named():
    held = SS.replace('("uwsgi",pid=11,fd=3),("uwsgi",pid=12,fd=3)', '("python3",pid=99,fd=3)')
    found = doctor_rules.address_in_use(healthy(listeners=held, app_pid=None), P)
    assert [f.cause for f in found] == [f"{SOCK} is held by python3 (pid 99), not uWSGI (it cannot bind: "
                                        "\"Address already in use\")"]
    assert "kill 99" in found[0].fix
    site443 = SITE.replace("listen 80;", "listen 80;\n    listen 443 ssl;")
    ports = SS + "tcp LISTEN 0 5 0.0.0.0:443 0.0.0.0:* users:((\"apache2\",pid=55,fd=4))\n"
    found = doctor_rules.address_in_use(healthy(listeners=ports, site=site443), P)
    assert [f.cause for f in found] == ["port 443 (the nginx site's) is held by apache2 (pid 55), not nginx"]
    # without sudo ss cannot name the holder: said so, when the app is down
    unnamed = healthy(listeners=f"u_str LISTEN 0 100 {SOCK} 1 * 0\n", listeners_named=False, app_pid=None)
    assert "sudo refused `ss -p`" in doctor_rules.address_in_use(unnamed, P)[0].cause


def test_a_tcp_app_port_behind_a_balancer():
    c = cfg(roles={"app": [{"host": "deploy@a.test", "address": "10.0.0.2"}], "lb": ["deploy@lb.test"]},
            project={"hosts": []})
    params = doctor.rule_params(c, Server("deploy@a.test", "app", "10.0.0.2"), "a.test")
    assert params["socket"].endswith(":8000") or ":" in params["socket"]
    port = int(params["socket"].rpartition(":")[2])
    ss = f"tcp LISTEN 0 5 0.0.0.0:{port} 0.0.0.0:* users:((\"node\",pid=5,fd=3))\n"
    found = doctor_rules.address_in_use(healthy(listeners=ss, app_pid=None, site=""), params)
    assert found and "held by node (pid 5)" in found[0].cause


def test_the_app_down_and_its_last_error():
    log = ("*** Operational MODE: preforking ***\nTraceback (most recent call last):\n  File \"wsgi.py\", line 3\n"
           "ModuleNotFoundError: No module named 'shop.missing'\nunable to load app 0\n"
           "*** no app loaded. GAME OVER ***\n")
    found = doctor_rules.app_down(healthy(app_pid=None, app_log=log), P)
    assert len(found) == 1 and "crashed" in found[0].cause
    assert "ModuleNotFoundError: No module named 'shop.missing'" in found[0].cause
    assert "GAME OVER" not in found[0].cause  # (the traceback, up to its exception line)
    plain = doctor_rules.app_down(healthy(app_pid=None, app_log="spawned uWSGI worker 1"), P)
    assert "is not running" in plain[0].cause and plain[0].fix.startswith("`fab start`")
    assert "nothing is deployed" in doctor_rules.app_down(healthy(app_pid=None, release=""), P)[0].cause
    assert doctor_rules.app_down(healthy(), P) == []


def test_socket_permission_names_the_directory_that_stops_nginx():
    chain = [["/srv", {"mode": "755", "owner": "root", "group": "root", "type": "directory"}],
             ["/srv/shop/shared/run", {"mode": "2750", "owner": "shop", "group": "shop", "type": "directory"}],
             [SOCK, {"mode": "660", "owner": "shop", "group": "www-data", "type": "socket"}]]
    found = doctor_rules.socket_permission(healthy(nginx_can_connect="no", socket_chain=chain), P)
    assert "/srv/shop/shared/run is 2750 shop:shop: www-data (groups www-data) may not enter it" in found[0].cause
    chain[1][1]["group"] = "www-data"
    chain[2][1]["mode"] = "640"
    found = doctor_rules.socket_permission(healthy(nginx_can_connect="no", socket_chain=chain), P)
    assert f"{SOCK} is 640 shop:www-data" in found[0].cause and "may not write to it" in found[0].cause
    chain[2][1]["mode"] = "660"
    found = doctor_rules.socket_permission(healthy(nginx_can_connect="no", socket_chain=chain, selinux="Enforcing"), P)
    assert "SELinux (enforcing)" in found[0].cause and "setsebool" in found[0].fix
    assert doctor_rules.socket_permission(healthy(nginx_can_connect=""), P) == []  # (sudo refused: unknown, no finding)
    assert doctor_rules.socket_permission(healthy(nginx_can_connect="no", app_pid=None), P) == []  # (app_down says it)


def test_upstream_elsewhere():
    other = SITE.replace(f"unix:{SOCK}", "127.0.0.1:9000")
    found = doctor_rules.upstream_mismatch(healthy(site=other), P)
    assert found[0].cause.startswith(f"nginx sends requests to 127.0.0.1:9000 but uWSGI listens on unix:{SOCK}")
    # the site is right, but the running master listens somewhere else (an old config)
    ss = SS.replace(SOCK, "/tmp/old.sock")
    found = doctor_rules.upstream_mismatch(healthy(listeners=ss), P)
    assert "the running uWSGI (master 11) listens on /tmp/old.sock" in found[0].cause
    # a master started beside the old one listens on its slot's socket, the one nginx uses is a second name
    slot = "20260101T000000Z-aaaaaaa"
    ss = SS.replace(SOCK, f"{SOCK}.{slot}")
    assert doctor_rules.upstream_mismatch(healthy(listeners=ss, app_slot=slot), P) == []
    assert "listens on " + f"{SOCK}.{slot}" in doctor_rules.upstream_mismatch(healthy(listeners=ss), P)[0].cause


def test_timeouts_from_harakiri_gunicorn_and_nginx():
    log = ("Thu - *** HARAKIRI ON WORKER 2 (pid: 40, try: 1) ***\n"
           "Thu - HARAKIRI [core 0] 10.0.0.1 - GET /report since 1764000000\n")
    found = doctor_rules.timeouts(healthy(app_log=log), P)
    assert found[0].cause.endswith("1 request(s) killed by uWSGI's timeout ([uwsgi] harakiri) in the last lines of "
                                   "its log; the last: 10.0.0.1 - GET /report")
    g = doctor.rule_params(cfg(app={"server": "gunicorn"}), None, "a.test")
    found = doctor_rules.timeouts(healthy(app_log="[CRITICAL] WORKER TIMEOUT (pid:9)"), g)
    assert "Gunicorn" in found[0].cause or "gunicorn" in found[0].cause.lower()
    assert "[gunicorn] timeout" in found[0].fix
    err = ('2026/01/01 [error] 5#5: *1 upstream timed out (110: Connection timed out) while reading response header '
           'from upstream, client: 1.2.3.4, request: "GET /slow HTTP/1.1", upstream: "uwsgi://unix:/s"')
    found = doctor_rules.timeouts(healthy(nginx_error_log=err), P)
    assert "cut by nginx's proxy timeout (504): upstream timed out on GET /slow HTTP/1.1" in found[0].cause


def test_static_files():
    def static(**st):
        return doctor_site.static_files(healthy(static={**healthy()["static"], **st}), P)
    assert "points at /srv/other/, not /srv/shop/shared/static/current/" in static(alias="/srv/other/")[0].cause
    assert "does not exist: static files not collected" in static(exists=False, sample="")[0].cause
    assert "collected nothing" in static(sample="")[0].cause
    assert "cannot read /srv/shop/shared/static/current/a.css" in static(nginx_can_read="no")[0].cause
    assert "has no `location /static/`" in static(alias="")[0].cause
    p = healthy()["probes"][:1] + [{"name": "shop.example", "path": "/static/a.css", "status": 403}]
    assert "answers 403" in doctor_site.static_files(healthy(probes=p), P)[0].cause


def test_allowed_hosts_debug_and_other_answers():
    bad = [{"name": "www.shop.example", "path": PROBE_PATH, "status": 400, "debug_page": False}]
    found = doctor_site.http_answers(healthy(probes=bad), P)
    assert [f.what for f in found] == ["allowed hosts"] and "Host: www.shop.example" in found[0].cause
    log = "Invalid HTTP_HOST header: 'shop.test'. You may need to add 'shop.test' to ALLOWED_HOSTS."
    assert "(Host: shop.test)" in doctor_site.http_answers(healthy(app_log=log), P)[0].cause
    debug = [{"name": "shop.example", "path": PROBE_PATH, "status": 404, "debug_page": True}]
    assert [f.what for f in doctor_site.http_answers(healthy(probes=debug), P)] == ["debug"]
    gw = [{"name": "shop.example", "path": PROBE_PATH, "status": 502, "debug_page": False}]
    found = doctor.findings(healthy(probes=gw, nginx_error_log="x [error] 5#5: connect() failed"), P)
    assert [f.what for f in found] == ["http"] and "[error] 5#5: connect() failed" in found[0].cause
    hang = [{"name": "shop.example", "path": PROBE_PATH, "status": None, "error": "timed out"}]
    assert doctor_site.http_answers(healthy(probes=hang), P)[0].cause == "Host: shop.example gets no answer (timed out)"
    # a 502 that another finding explains is not said twice
    assert whats(healthy(probes=gw, app_pid=None)) == ["app down"]


def test_secret_files_readable_by_others():
    st = {"mode": "644", "owner": "deploy", "group": "shop", "type": "regular file"}
    found = doctor_site.secret_files(healthy(secret_files={"/srv/shop/shared/config/app.env": st}), P)
    assert found[0].cause.startswith("/srv/shop/shared/config/app.env is 644 deploy:shop")
    assert doctor_site.secret_files(healthy(secret_files={"/k": {**st, "mode": "600"}}), P) == []


def test_nginx_state():
    out = ("nginx: [warn] conflicting server name \"shop.example\" on 0.0.0.0:80, ignored\n"
           "nginx: [emerg] unknown directive \"x\" in /etc/nginx/sites-enabled/other:1\n"
           "nginx: configuration file /etc/nginx/nginx.conf test failed")
    found = doctor_site.nginx_state(healthy(nginx_test={"rc": 1, "output": out}), P)
    assert [f.cause.split(":")[0] for f in found] == ["nginx's config does not pass `nginx -t`",
                                                      "[warn] conflicting server name \"shop.example\" on 0.0.0.0"]
    assert "[emerg] unknown directive \"x\"" in found[0].cause
    assert whats(healthy(nginx_pid=None, probes=[])) == ["nginx"]
    assert "is not enabled" in doctor_site.nginx_state(healthy(site_enabled=False), P)[0].cause
    assert "is not there" in doctor_site.nginx_state(healthy(site="", site_path=""), P)[0].cause
    assert "not installed" in doctor_site.nginx_state(healthy(nginx_installed=False), P)[0].cause
    # a config test sudo refused is no finding
    assert doctor_site.nginx_state(healthy(nginx_test={"rc": 1, "output": "sudo: a password is required"}), P) == []


def test_disk_and_clock():
    assert "almost full (100 MiB free)" in doctor_site.disks(healthy(disk_var_log={"free": 100 << 20, "total": 10 << 30}), P)[0].cause
    assert "/srv/shop" in doctor_site.disks(healthy(disk_deploy_to={"free": 1 << 30, "total": 100 << 30}), P)[0].cause
    assert "95s behind" in doctor_site.clock(healthy(clock_skew=-95), P)[0].cause
    assert doctor_site.clock(healthy(clock_skew=10), P) == []


@pytest.mark.parametrize("server,manager", [("uwsgi", "pidfile"), ("uwsgi", "emperor"), ("gunicorn", "supervisor"),
                                            ("gunicorn", "systemd"), ("uwsgi", "systemd"), ("uvicorn", "pidfile"),
                                            ("daphne", "pidfile"), ("hypercorn", "pidfile")])
def test_params_for_every_app_server_and_manager(server, manager):
    extra = {"asgi": "shop.asgi:application"} if server in ("uvicorn", "daphne", "hypercorn") else {}
    p = doctor.rule_params(cfg(app={"server": server, "manager": manager, **extra}), None, "a.test")
    assert p["pidfile"] == f"/srv/shop/shared/run/{server}.pid" and p["log"] == f"/srv/shop/shared/log/{server}.log"
    assert p["socket"] == f"/srv/shop/shared/run/{server}.sock" and p["upstream"] == "unix:" + p["socket"]
    assert p["app_user"] == "shop" and p["app"] and p["nginx"]
    assert (p["journal_argv"] is not None) == (manager == "systemd")


def test_a_load_balancer_has_no_app_checks():
    c = cfg(roles={"app": [{"host": "deploy@a.test", "address": "10.0.0.2"}], "lb": ["deploy@lb.test"]},
            project={"hosts": []})
    p = doctor.rule_params(c, Server("deploy@lb.test", "lb"), "lb.test")
    assert not p["app"] and p["nginx"]
    assert whats(healthy(app_pid=None, release="", listeners=SS.replace(SOCK, "/other.sock")), p) == []


def test_report_format_and_exit():
    reps = [{"host": "a", "findings": []},
            {"host": "b", "findings": [doctor_rules.Finding("debug", "DEBUG is on", "turn it off")]},
            {"host": "c", "error": "c: cannot connect"}]
    text = doctor.format_report(reps)
    assert text.splitlines() == ["a", "  no problems found", "b", "  PROBLEM (debug): DEBUG is on",
                                 "     fix: turn it off", "c", "  could not check: c: cannot connect",
                                 "1 problem(s) on 1 host(s); 1 host(s) not checked"]
    assert doctor.failed(reps) and not doctor.failed(reps[:1])
    assert doctor.format_report(reps[:1]).endswith("no problems found")


RULESET = """table inet filter {
	chain input {
		type filter hook input priority filter; policy drop;
		ct state established,related accept
		iif "lo" accept
		tcp dport 8000 ip saddr { 10.0.0.3 } accept
		tcp dport { 22, 443 } accept
		tcp dport 9000-9100 accept
		counter packets 3 bytes 180 drop
	}
	chain forward {
		type filter hook forward priority filter; policy drop;
	}
}
table inet fabdeploy_shop {
	chain input {
		type filter hook input priority 0; policy accept;
		tcp dport 8000 fib saddr type local accept
		tcp dport 8000 reject with tcp reset
	}
}
"""


def test_the_host_firewall_verdict_for_a_new_connection():
    from fabdeploy.ops.doctor_firewall import input_chains, verdict
    chains = input_chains(RULESET)
    assert [(c["table"], c["chain"], c["policy"]) for c in chains] == [("inet filter", "input", "drop"),
                                                                       ("inet fabdeploy_shop", "input", "accept")]
    assert [verdict(chains[0], p) for p in (80, 443, 22, 9050, 8000)] == ["drop", "accept", "accept", "accept", "drop"]
    assert [verdict(chains[1], p) for p in (80, 8000)] == ["accept", "reject"]


def test_a_firewall_dropping_the_sites_port_is_a_finding():
    found = doctor.findings(healthy(nft=RULESET), P)
    assert [f.cause for f in found] == ["the host firewall drops new connections to port 80 (nft table inet filter, "
                                       "chain input, policy drop)"]
    assert "tcp dport 80 accept" in found[0].fix
    assert doctor.findings(healthy(nft=RULESET.replace("{ 22, 443 }", "{ 22, 80, 443 }")), P) == []
    assert doctor.findings(healthy(nft=None), P) == []  # (sudo refused: unknown)


def test_the_facts_program_on_an_empty_host_layout(tmp_path):
    """FACTS_PY run for real by this interpreter (every host path a parameter; the app user is this user, so no
    sudo -u): a deploy_to with nothing deployed, no nginx config; its facts give one finding, nothing deployed."""
    import getpass
    import json
    import subprocess
    from fabdeploy.ops.doctor_facts import FACTS_PY
    c = cfg(paths={"deploy_to": str(tmp_path / "srv")}, app={"user": getpass.getuser()})
    params = {**doctor.rule_params(c, None, "a.test"), "nginx_conf": str(tmp_path / "no-nginx.conf")}
    (tmp_path / "srv").mkdir()
    res = subprocess.run([sys.executable, "-c", FACTS_PY, json.dumps(params)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    facts = json.loads(res.stdout.split("@@fabdeploy json ", 1)[1])
    assert facts["app_pid"] is None and facts["release"] == "" and not facts["nginx_installed"]
    assert facts["disk_deploy_to"]["total"] > 0
    assert [(f.what, f.cause) for f in doctor.findings(facts, params)] == [
        ("nginx", f"nginx is not installed (no {tmp_path}/no-nginx.conf)"),
        ("app down", "nothing is deployed here yet (no current release)")]


# ---- TLS: the site's certificate files as root's openssl read them

def tls_facts(**cert) -> dict:
    now = 1_800_000_000
    c = {"path": "/etc/x/fullchain.pem", "exists": True, "not_after": now + 60 * 86400,
         "names": ["shop.example", "*.shop.example"], "pubkey": "PUB-A", "read": True, **cert}
    return {"time": now, "tls": {"sudo": True, "names": ["shop.example", "www.shop.example", "_"],
                                 "certificate": c, "key": {"path": "/etc/x/privkey.pem", "exists": True,
                                                           "read": True, "pubkey": "PUB-A"}}}


def tls_found(F, params=P):
    return [(f.what, f.cause) for f in doctor.findings(F, params) if f.what.startswith("tls")]


def test_tls_a_healthy_certificate_gives_nothing_and_sudo_refused_is_unknown_not_a_finding():
    assert tls_found(tls_facts()) == []
    F = tls_facts()
    F["tls"] = {"sudo": False, "names": ["shop.example"], "certificate": {"path": "/x", "exists": None},
                "key": {"path": "/y", "exists": True, "read": False}}
    assert tls_found(F) == []
    F = tls_facts(not_after=1_800_000_000 - 1)  # (a readable chain, a key sudo could not read: expiry still judged)
    F["tls"]["sudo"], F["tls"]["key"] = False, {"path": "/etc/x/privkey.pem", "exists": True, "read": False}
    assert [w for w, _ in tls_found(F)] == ["tls expiry"]


def test_tls_expired_and_expiring_certificates():
    now = 1_800_000_000
    (what, cause), = tls_found(tls_facts(not_after=now - 3600))
    assert what == "tls expiry" and cause.startswith("the certificate /etc/x/fullchain.pem expired on 2027-01-15")
    (what, cause), = tls_found(tls_facts(not_after=now + 5 * 86400))
    assert what == "tls expiry" and "(5 days left, under 14)" in cause
    acme = doctor.rule_params(cfg(tls={"mode": "acme"}), None, "a.test")
    fix = next(f.fix for f in doctor.findings(tls_facts(not_after=now - 1), acme) if f.what == "tls expiry")
    assert "sudo /etc/fabdeploy/acme/shop/renew --force-renewal" in fix


def test_tls_a_key_of_another_certificate_and_missing_or_broken_files():
    F = tls_facts()
    F["tls"]["key"]["pubkey"] = "PUB-B"
    assert tls_found(F) == [("tls key", "/etc/x/privkey.pem is not the key of /etc/x/fullchain.pem (nginx: \"key "
                                        "values mismatch\"; https does not start)")]
    F = tls_facts()
    F["tls"]["key"] = {"path": "/etc/x/privkey.pem", "exists": False}
    (what, cause), = tls_found(F)
    assert what == "tls files" and cause.startswith("the nginx site's ssl_certificate_key /etc/x/privkey.pem is missing")
    F = tls_facts()
    F["tls"]["certificate"] = {"path": "/etc/x/fullchain.pem", "exists": True, "read": True}
    assert tls_found(F) == [("tls files", "the nginx site's ssl_certificate /etc/x/fullchain.pem is not a readable "
                                          "PEM certificate")]


def test_tls_a_server_name_the_certificate_does_not_cover():
    (what, cause), = tls_found(tls_facts(names=["shop.example"]))
    assert what == "tls name" and "does not cover www.shop.example:" in cause
    from fabdeploy.ops.doctor_tls import covers
    assert covers(["*.shop.example"], "www.shop.example") and not covers(["*.shop.example"], "a.b.shop.example")
    assert not covers(["*.shop.example"], "shop.example") and covers(["Shop.Example"], "shop.example.")
