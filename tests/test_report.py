"""Pure formatting of `fab status` / `fab releases` reports and drift detection."""
from fabdeploy.ops import report

UP = {"app": {"pid": 5, "workers": 2, "on_current": True}, "nginx": {"pid": 7, "site_enabled": True},
      "http": {"ok": True, "status": 200, "answer": "GET / (Host: a.test) -> 200", "ms": 5, "error": ""}, "disk_free_bytes": 1 << 30, "lock": None, "last": None,
      "revision": "abcdef1234567", "branch": "main"}


def test_drift_only_when_hosts_differ():
    same = [{"host": "a", "current": "R1", **UP}, {"host": "b", "current": "R1", **UP}]
    assert report.drift(same) == ""
    differ = same + [{"host": "c", "current": "R2", **UP}, {"host": "d", "error": "unreachable"}]
    assert report.drift(differ) == "DRIFT: hosts are not on the same release: a=R1, b=R1, c=R2"
    assert report.format_status(differ).endswith(report.drift(differ))


def test_status_lines_and_health():
    down = {"host": "b", "current": "", **UP, "app": {"pid": None, "workers": 0, "on_current": False},
            "http": {"status": None, "ms": 3, "error": "refused"}}
    text = report.format_status([{"host": "a", "current": "R1", **UP}, down, {"host": "c", "error": "boom"}])
    assert "  release   R1  (abcdef1234, main)" in text and "uWSGI master 5 up, 2 workers" in text
    assert "uWSGI DOWN" in text and "http      FAILED: refused" in text and "c\n  error: boom" in text
    assert report.healthy({"host": "a", "current": "R1", **UP})
    assert not report.healthy(down) and not report.healthy({"host": "c", "error": "x"})
    five = {"host": "a", "current": "R1", **UP, "http": {"ok": False, "status": 502, "ms": 1, "error": "",
                                                          "answer": "GET / (Host: a.test) -> 502"}}
    assert not report.healthy(five)
    assert "  http      GET / (Host: a.test) -> 200 in 5 ms" in text


def test_unhealthy_says_why():
    bad = {"ok": False, "status": 400, "ms": 1, "error": "",
           "answer": "GET / (Host: a.test) -> 400: Bad Request; does ALLOWED_HOSTS ..."}
    rep = {"host": "a", "current": "R1", **UP, "http": bad}
    assert report.unhealthy(rep) == "http: GET / (Host: a.test) -> 400: Bad Request; does ALLOWED_HOSTS ..."
    assert "  http      UNHEALTHY: GET / (Host: a.test) -> 400: Bad Request" in report.format_status([rep])
    assert report.unhealthy({"host": "a", "current": "R1", **UP}) == ""
    assert report.unhealthy({"host": "c", "error": "unreachable"}) == "unreachable"
    down = {**UP, "app": {"pid": None, "workers": 0, "on_current": False}}
    assert report.unhealthy(down) == "uWSGI is down"
    assert report.unhealthy({**UP, "nginx": {"pid": None, "site_enabled": True}}) == "nginx is down"


def test_releases_table():
    rel = {"id": "20260101T000000Z-abcdef0", "revision": "a" * 40, "branch": "", "deployed_at": "t",
           "deployed_by": "me@box", "status": "current", "venv_present": False}
    text = report.format_releases([{"host": "a", "releases": [rel]}, {"host": "b", "releases": []}])
    lines = text.splitlines()
    assert lines[0] == "a" and lines[1].split() == ["RELEASE", "REVISION", "BRANCH", "DEPLOYED", "AT", "DEPLOYED",
                                                    "BY", "STATUS", "VENV"]
    assert lines[2].split() == ["20260101T000000Z-abcdef0", "aaaaaaaaaa", "-", "t", "me@box", "current", "removed"]
    assert lines[3:] == ["b", "  no releases"]
