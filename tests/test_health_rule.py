"""The health rule (health.PROBE_PY / CHECK_PY) against real local servers: an HTTP server answering per path,
and a real uWSGI speaking the uwsgi protocol. Plus the [health] status config forms."""
from __future__ import annotations

import http.server
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fabdeploy.steps import health
from fabdeploy.config import parse_config
from fabdeploy.errors import ConfigError
from test_config import raw
from test_phases import make_cfg

# path -> (status, Location) ; anything else 200
ROUTES = {
    "/": (302, "/catalog/"),
    "/catalog/": (200, ""),
    "/abs": (301, "http://{host}/catalog/"),
    "/tls": (301, "https://{host}/"),
    "/away": (302, "http://elsewhere.example.org/"),
    "/loop": (302, "/loop2"),
    "/loop2": (302, "/loop"),
    "/to-gone": (302, "/gone"),
    "/gone": (404, ""),
    "/boom": (500, ""),
    "/moved": (302, "/catalog/"),
}
ALLOWED = {"shop.test", "www.shop.test"}


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        host = self.headers.get("Host", "")
        self.server.seen.append((self.path, host))
        status, where = (400, "") if host not in ALLOWED else ROUTES.get(self.path, (200, ""))
        self.send_response(status)
        if where:
            self.send_header("Location", where.format(host=host))
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"xx")

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def web():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.seen = []
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=10)


def check(port, path, accept=(), hosts=("shop.test",), proto="http", tls=False, timeout=0.5):
    spec = {"proto": proto, "addr": "127.0.0.1", "port": port, "hosts": list(hosts), "path": path,
            "accept": list(accept), "tls": tls, "timeout": timeout}
    proc = subprocess.run([sys.executable, "-c", health.check_program(make_cfg()), json.dumps(spec)], capture_output=True,
                          text=True, timeout=60)
    assert proc.stderr == ""
    return proc.returncode, proc.stdout


def test_same_host_redirect_is_followed_to_a_2xx(web):
    assert check(web.server_port, "/") == (0, "GET / (Host: shop.test) -> 302 /catalog/ -> 200\n")
    assert check(web.server_port, "/abs") == (0, "GET /abs (Host: shop.test) -> 301 http://shop.test/catalog/ -> 200\n")


def test_a_4xx_after_a_redirect_fails(web):
    assert check(web.server_port, "/to-gone") == (1, "GET /to-gone (Host: shop.test) -> 302 /gone -> 404\n")


def test_5xx_fails(web):
    assert check(web.server_port, "/boom") == (1, "GET /boom (Host: shop.test) -> 500\n")


def test_redirect_to_https_without_tls_names_secure_ssl_redirect(web):
    code, out = check(web.server_port, "/tls")
    assert code == 1 and out.startswith("GET /tls (Host: shop.test) -> 301 https://shop.test/: ")
    assert "SECURE_SSL_REDIRECT" in out and "no TLS" in out


def test_redirect_to_https_is_healthy_when_the_site_has_tls(web):
    assert check(web.server_port, "/tls", tls=True) == (0, "GET /tls (Host: shop.test) -> 301 https://shop.test/\n")


def test_redirect_to_another_host_fails_unless_its_code_is_accepted(web):
    code, out = check(web.server_port, "/away")
    assert code == 1 and "302 http://elsewhere.example.org/: a redirect to another host" in out
    assert check(web.server_port, "/away", accept=[200, 302]) == (0, "GET /away (Host: shop.test) -> 302\n")


def test_redirect_loop_fails(web):
    code, out = check(web.server_port, "/loop")
    assert code == 1 and out.endswith(": too many redirects\n")


def test_400_names_allowed_hosts_and_the_host_header(web):
    code, out = check(web.server_port, "/catalog/", hosts=["shop.example.net"])
    assert code == 1
    assert out == ("GET /catalog/ (Host: shop.example.net) -> 400: Bad Request; does ALLOWED_HOSTS "
                   "([django] allowed_hosts) include shop.example.net?\n")


def test_accepted_codes_are_taken_as_they_are_without_following(web):
    before = len(web.seen)
    assert check(web.server_port, "/moved", accept=[200, 302]) == (0, "GET /moved (Host: shop.test) -> 302\n")
    assert web.seen[before:] == [("/moved", "shop.test")]
    # a redirect whose code is not listed is followed; the final answer must be listed
    assert check(web.server_port, "/moved", accept=[200]) == (0, "GET /moved (Host: shop.test) -> 302 /catalog/ -> 200\n")
    code, out = check(web.server_port, "/catalog/", accept=[204])
    assert code == 1 and out == "GET /catalog/ (Host: shop.test) -> 200 (health.status accepts 204)\n"


def test_every_server_name_is_checked_and_only_failing_ones_are_reported(web):
    assert check(web.server_port, "/catalog/", hosts=["shop.test", "www.shop.test"]) == (
        0, "GET /catalog/ (Host: shop.test) -> 200; GET /catalog/ (Host: www.shop.test) -> 200\n")
    code, out = check(web.server_port, "/catalog/", hosts=["shop.test", "shop.example.net"])
    assert code == 1 and out.startswith("GET /catalog/ (Host: shop.example.net) -> 400: ") and "shop.test" not in out



def fast(port, path, accept=(), hosts=("shop.test",), addr="127.0.0.1"):
    """health.FAST_SH (what check_command runs first over plain HTTP): its exit code and output."""
    spec = {"proto": "http", "addr": addr, "port": port, "hosts": list(hosts), "path": path,
            "accept": list(accept), "tls": False, "timeout": 1}
    proc = subprocess.run(["sh", "-c", health.fast_check_command(spec)], capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stdout


@pytest.mark.parametrize("path, accept, hosts", [
    ("/catalog/", (), ("shop.test",)),
    ("/catalog/", (), ("shop.test", "www.shop.test")),
    ("/moved", (200, 302), ("shop.test",)),
    ("/away", (302,), ("shop.test",)),
    ("/q?x=1&y='a'&z=$(pwd)", (), ("shop.test",)),
])
def test_the_fast_check_says_what_the_rule_says_on_a_first_healthy_answer(web, path, accept, hosts):
    before = len(web.seen)
    code, out = fast(web.server_port, path, accept, hosts)
    assert (code, out) == check(web.server_port, path, accept, hosts)
    assert code == 0
    # one request per name, and the same requests the rule's first try sends
    assert web.seen[before:before + len(hosts)] == [(path, h) for h in hosts]


@pytest.mark.parametrize("path, accept, hosts", [
    ("/", (), ("shop.test",)),  # a redirect: the rule follows it
    ("/boom", (), ("shop.test",)),
    ("/gone", (), ("shop.test",)),
    ("/catalog/", (204,), ("shop.test",)),  # a 2xx that is not the listed code
    ("/catalog/", (), ("shop.test", "shop.example.net")),  # one name's 400
])
def test_the_fast_check_leaves_everything_else_to_the_rule(web, path, accept, hosts):
    assert fast(web.server_port, path, accept, hosts) == (1, "")


def test_the_fast_check_without_a_server_or_over_another_protocol():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert fast(port, "/") == (1, "")
    spec = {"proto": "uwsgi", "addr": "127.0.0.1", "port": 1, "hosts": ["a"], "path": "/", "accept": [],
            "tls": False, "timeout": 1}
    assert health.fast_check_command(spec) is None
    assert health.fast_check_command({**spec, "proto": "https"}) is None


class _KeepAlive(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # (the connection stays open after each answer, as nginx keeps it)

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        if self.path == "/chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"2\r\nxx\r\n0\r\n\r\n")
        else:
            self.send_header("Content-Length", "5000")
            self.end_headers()
            self.wfile.write(b"y" * 5000)

    def log_message(self, *args):
        pass


def test_the_fast_check_reads_the_answer_by_its_length_and_closes_first():
    """Over a kept-alive connection: the body is read by Content-Length (no wait for the server to close), and
    the check closes its end first, as Python's http.client does (the server's end of port 80 left in no
    TIME_WAIT); an answer without a length (chunked) goes to the rule."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _KeepAlive)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        start = time.monotonic()
        assert fast(srv.server_port, "/page") == (0, "GET /page (Host: shop.test) -> 200\n")
        assert time.monotonic() - start < health.FAST_TIMEOUT
        assert fast(srv.server_port, "/chunked") == (1, "")
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=10)


def test_check_command_falls_back_to_the_rule(web, tmp_path):
    """check_command: the fast check first, the rule (check_program) when that is not a healthy first answer."""
    from fabdeploy.steps import health as h
    cfg = make_cfg(nginx={"listen": f"127.0.0.1:{web.server_port}", "server_name": "shop.test"},
                   project={"python": sys.executable}, health={"path": "/", "timeout": 2})
    before = len(web.seen)
    proc = subprocess.run(["sh", "-c", h.check_command(cfg, "web1")], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, "GET / (Host: shop.test) -> 302 /catalog/ -> 200\n")
    # the fast check's request, then the rule's: the redirect followed
    assert web.seen[before:] == [("/", "shop.test"), ("/", "shop.test"), ("/catalog/", "shop.test")]

WSGI_APP = '''
def application(env, start_response):
    host, path = env.get("HTTP_HOST", ""), env["PATH_INFO"]
    if host != "shop.test":
        start_response("400 Bad Request", [("Content-Type", "text/plain")])
    elif path == "/":
        start_response("302 Found", [("Content-Type", "text/plain"), ("Location", "/catalog/")])
    elif path == "/tls":
        start_response("301 Moved Permanently", [("Location", "https://" + host + "/")])
    else:
        start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"x" * 10000]
'''


@pytest.fixture(scope="module")
def uwsgi_port(tmp_path_factory):
    """A real uWSGI serving a small WSGI app on a local TCP socket (uwsgi protocol)."""
    tmp = tmp_path_factory.mktemp("uwsgi")
    (tmp / "app.py").write_text(WSGI_APP)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(Path(sys.executable).parent / "uwsgi"), "--socket", f"127.0.0.1:{port}",
                             "--chdir", str(tmp), "--wsgi-file", str(tmp / "app.py"), "--master",
                             "--processes", "1", "--die-on-term"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    yield port
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_uwsgi_protocol_follows_the_same_rule(uwsgi_port):
    assert check(uwsgi_port, "/", proto="uwsgi", timeout=10) == (
        0, "GET / (Host: shop.test) -> 302 /catalog/ -> 200\n")
    code, out = check(uwsgi_port, "/tls", proto="uwsgi")
    assert code == 1 and "SECURE_SSL_REDIRECT" in out
    code, out = check(uwsgi_port, "/", proto="uwsgi", hosts=["www.shop.test"])
    assert code == 1 and "ALLOWED_HOSTS" in out and "(Host: www.shop.test) -> 400" in out


@pytest.mark.parametrize("value,accepted", [(0, []), (302, [302]), ([], []), ([200, 302], [200, 302])])
def test_health_status_forms(value, accepted):
    cfg = parse_config(raw(health={"status": value}))
    assert health.accepted_statuses(cfg) == accepted


def test_health_status_default_is_the_rule():
    assert health.accepted_statuses(parse_config(raw())) == []


@pytest.mark.parametrize("value", [[200, "302"], [99], 600, -1, "200", [True], True])
def test_bad_health_status(value):
    with pytest.raises(ConfigError, match=r"health\.status must be a list of HTTP status codes like \[200, 302\]"):
        parse_config(raw(health={"status": value}))


def test_check_spec_sends_every_plain_server_name():
    cfg = parse_config(raw(nginx={"server_name": "shop.test _ *.shop.test ~^a$ www.shop.test", "listen": 8080}))
    spec = health.check_spec(cfg, "web1")
    assert spec["hosts"] == ["shop.test", "www.shop.test"] and spec["port"] == 8080 and spec["tls"] is False
    assert health.check_spec(parse_config(raw()), "web1")["hosts"] == ["web1"]  # server_name "_": the host


def test_example_config_lets_allowed_hosts_follow_the_server_names():
    """A copied deploy.example.toml must not pin ALLOWED_HOSTS to something other than the names nginx serves."""
    import tomllib
    from conftest import REPO
    cfg = parse_config(tomllib.loads((REPO / "templates" / "deploy.example.toml").read_text()))
    assert cfg.django.allowed_hosts == [] and cfg.allowed_hosts == cfg.server_names
    assert health.accepted_statuses(cfg) == []
