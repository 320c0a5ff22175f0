"""A lab host's reboot (TestHost.reboot()): the emulated Debian boot of a plain lab host, and systemd as
PID 1 of an init="systemd" host.  Real processes, real nginx, supervisor, nft, sshd; no mocks."""
from __future__ import annotations

import os
import textwrap
import time
import urllib.error
import urllib.request

import pytest

import hostlab
import hostlab_boot
import hostlab_plan
import hostlab_units
import labindex
UNITS = "/etc/systemd/system"

NFT_CONF = """\
#!/usr/sbin/nft -f
flush ruleset
table inet labboot {
    chain input { type filter hook input priority 0; policy accept; }
}
"""


def own_unit(host) -> str:
    """A service of our own: a web server on :8080 run as `bootapp`, its page written by ExecStartPre
    from Environment= and EnvironmentFile=."""
    return textwrap.dedent(f"""\
        [Unit]
        Description=lab boot test service
        After=network.target

        [Service]
        User=bootapp
        Environment=GREETING=hello
        EnvironmentFile=/etc/default/lab-echo
        WorkingDirectory=/srv/lab-echo
        RuntimeDirectory=lab-echo
        ExecStartPre=/bin/sh -c 'echo "$GREETING $FROM_FILE $$(id -un)" > index.html'
        ExecStart=/usr/bin/python3 -m http.server 8080 --bind {host.address}
        ProtectSystem=full

        [Install]
        WantedBy=multi-user.target
        """)


def enable(host, unit: str, target: str = "multi-user.target", source: str | None = None) -> None:
    src = source or f"{UNITS}/{unit}"
    host.exec(["ln", "-sfn", src, f"{UNITS}/{target}.wants/{unit}"])


def setup_own_unit(host) -> None:
    host.exec("id bootapp >/dev/null 2>&1 || useradd --system --no-create-home bootapp; "
              "install -d -o bootapp /srv/lab-echo; echo FROM_FILE=fromfile > /etc/default/lab-echo")
    host.path(f"{UNITS}/lab-echo.service").write_text(own_unit(host))
    enable(host, "lab-echo.service")


def page(host) -> str:
    """The own unit's page (it may still be starting: a simple service is "started" once forked)."""
    for _ in range(100):
        try:
            with urllib.request.urlopen(f"http://{host.address}:8080/", timeout=10) as resp:
                return resp.read().decode()
        except urllib.error.URLError as e:
            if not isinstance(e.reason, ConnectionRefusedError):
                raise
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {host.address}:8080")


def sleeper_pid(host) -> int:
    """pid of supervisor's lab-sleeper program over SSH, once `supervisorctl` reports it RUNNING
    (supervisord and its program take a moment to come up: polled, bounded)."""
    for _ in range(100):
        status = host.ssh("sudo supervisorctl status lab-sleeper", check=False).stdout
        if any(word in status for word in ("RUNNING", "FATAL", "BACKOFF")):
            break
        time.sleep(0.1)
    assert status.split()[:2] == ["lab-sleeper", "RUNNING"], status
    return int(status.split("pid ")[1].split(",")[0])


def uid_of(pid: int) -> int:
    line = next(ln for ln in open(f"/proc/{pid}/status") if ln.startswith("Uid:"))
    return int(line.split()[1])


def host_uid(host, user: str) -> int:
    return int(host.exec(["id", "-u", user]).stdout)


def nft_tables(host) -> str:
    return hostlab._run(["ip", "netns", "exec", host.netns, "nft", "list", "tables"]).stdout


SLEEPER = """\
[program:lab-sleeper]
command=/bin/sleep 100000
user=bootapp
autostart=true
startsecs=1
"""


@pytest.fixture(scope="module")
def web(make_host):
    host = make_host("boot")
    host.exec("nginx")
    setup_own_unit(host)
    host.path("/etc/supervisor/conf.d/lab-sleeper.conf").write_text(SLEEPER)
    return host


# -- pure builders ------------------------------------------------------------------------------------


def test_a_bad_init_is_one_clear_line():
    with pytest.raises(hostlab.LabError, match=r"^bad init 'upstart' for host 'x' \(want one of: lab, systemd\)$"):
        hostlab.TestHost("x", 1, init="upstart")


def test_unit_files_parse_like_systemd():
    sections = hostlab_units.parse(
        "[Service]\nExecStart=/bin/a \\\n  --flag\nEnvironment=A=1\nEnvironment=\nEnvironment=B=2\n# c\n")
    assert sections == {"Service": {"ExecStart": ["/bin/a  --flag"], "Environment": ["B=2"]}}


def test_exec_lines_expand_prefixes_specifiers_and_variables():
    unit = hostlab_units.Unit("app@blue.service", "/etc/systemd/system/app@.service", {})
    unit.instance = "blue"
    env = {"OPTS": "-a -b", "NAME": "x y"}
    line = hostlab_plan.exec_line(unit, "-+/bin/run %i $OPTS ${NAME}z 'q $$HOME' %%", env, "/root", "root")
    assert (line.argv, line.ignore_failure, line.as_root) == \
        (["/bin/run", "blue", "-a", "-b", "x yz", "q $HOME", "%"], True, True)
    with pytest.raises(hostlab_units.Refused, match=r"app@blue.service: cannot expand specifier %Z"):
        hostlab_plan.exec_line(unit, "/bin/run %Z", env, "/root", "root")


def test_commands_run_as_the_unit_user_with_only_its_environment():
    p = hostlab_plan.Plan("a.service", "simple", [], [hostlab_plan.ExecLine(["/bin/x", "a b"])], [],
                          uid=998, gid=997, groups=[33, 997], user="app", env={"K": "v w"}, cwd="/srv/a",
                          nofile="1024:4096")
    assert hostlab_boot.command(p, p.start[0]) == (
        "cd /srv/a || exit 200; umask 0022; ulimit -Hn 4096 && ulimit -Sn 1024 || exit 205; "
        "exec setpriv --reuid=998 --regid=997 --groups=33,997 env -i 'K=v w' /bin/x 'a b'")


def test_reboot_kills_everything_clears_run_and_boots_the_enabled_units(web):
    assert web.http("/")[0] == 200
    old = web.pids()
    web.path("/run/stale-marker").write_text("before the reboot\n")

    report = web.reboot()

    assert not [p for p in old if hostlab._pid_alive(p)], "a process of the old boot survived"
    assert not web.path("/run/stale-marker").exists()
    assert web.ssh("echo up").stdout.strip() == "up"
    assert web.http("/")[0] == 200                                    # nginx.service (Type=forking)
    assert any(s.startswith("nginx.service (forking, pid ") for s in report.started), report.text()
    assert page(web).strip() == "hello fromfile bootapp"              # ExecStartPre as User, env, cwd
    assert uid_of(report.pids["lab-echo.service"]) == host_uid(web, "bootapp")
    assert web.path("/run/lab-echo").stat().st_uid == host_uid(web, "bootapp")   # RuntimeDirectory
    assert any("lab-echo.service" in s and "not applied: ProtectSystem" in s for s in report.started)
    # supervisor comes up through its enabled unit, and answers over SSH
    assert "supervisor.service" in report.pids
    assert uid_of(sleeper_pid(web)) == host_uid(web, "bootapp")
    assert web.ssh("pgrep -x -f '/usr/bin/python3 /usr/bin/supervisord -n -c "
                   "/etc/supervisor/supervisord.conf'").returncode == 0
    # the stock units a lab host does not run are listed with the reason
    assert any(s.startswith("ssh.service: the lab's own sshd") for s in report.skipped)
    assert any(s.startswith("systemd-timesyncd.service: ConditionVirtualization=!container")
               for s in report.skipped)


def test_nft_table_comes_back_only_through_an_enabled_nftables_service(web):
    web.path("/etc/nftables.conf").write_text(NFT_CONF)
    web.exec(["nft", "-f", "/etc/nftables.conf"])
    assert "table inet labboot" in nft_tables(web)

    web.reboot()                                   # nftables.service not enabled: the table is gone
    assert "labboot" not in nft_tables(web)

    enable(web, "nftables.service", "sysinit.target", "/lib/systemd/system/nftables.service")
    report = web.reboot()
    assert "table inet labboot" in nft_tables(web)
    assert "nftables.service (oneshot); not applied: ProtectSystem, ProtectHome" in report.started
    assert "labboot" not in hostlab._run(["nft", "list", "tables"]).stdout   # never the machine's


def test_cron_reboot_lines_run_as_their_user_only_with_a_cron_daemon(web):
    web.path("/etc/cron.d/labboot").write_text(
        "SHELL=/bin/sh\nMARK=cron-ran\n@reboot bootapp echo $MARK > /srv/lab-echo/cron-mark\n")
    web.path("/etc/cron.d/ignored.dpkg-old").write_text("@reboot root touch /srv/lab-echo/wrong\n")
    report = web.reboot(check=False)
    assert report.failed == ["/etc/cron.d/labboot: @reboot lines, but no cron daemon is enabled in the "
                             "host (cron.service or cronie.service): a real boot would not run them"]
    with pytest.raises(hostlab.LabError, match=r"reboot of boot-\d+: /etc/cron.d/labboot: @reboot"):
        web.reboot()

    # cron is not installed on this machine: a stand-in unit file, which the emulator never runs
    web.path(f"{UNITS}/cron.service").write_text("[Service]\nExecStart=/usr/sbin/cron -f\n")
    enable(web, "cron.service")
    report = web.reboot()
    mark = web.path("/srv/lab-echo/cron-mark")
    web.exec("for i in $(seq 100); do [ -s /srv/lab-echo/cron-mark ] && break; sleep 0.1; done")
    assert mark.read_text() == "cron-ran\n"
    assert mark.stat().st_uid == host_uid(web, "bootapp")
    assert not web.path("/srv/lab-echo/wrong").exists()   # cron ignores file names with a dot
    assert "cron.service (emulated: its @reboot jobs only, 1 found)" in report.started


def test_notify_units_are_awaited(make_host):
    host = make_host("notify")
    sender = ("import os, socket; s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); "
              "s.sendto(b'READY=1', os.environ['NOTIFY_SOCKET']); import time; time.sleep(600)")
    host.path(f"{UNITS}/lab-ready.service").write_text(
        f'[Service]\nType=notify\nExecStart=/usr/bin/python3 -c "{sender}"\n')
    host.path(f"{UNITS}/lab-dies.service").write_text(
        "[Service]\nType=notify\nExecStart=/bin/sh -c 'echo dying; exit 3'\n")
    enable(host, "lab-ready.service")
    enable(host, "lab-dies.service")
    report = host.reboot(check=False)
    assert report.failed == ["lab-dies.service: Type=notify: exited before READY=1; log: dying"]
    assert hostlab._pid_alive(report.pids["lab-ready.service"])


def test_the_emulator_refuses_what_it_cannot_emulate(make_host):
    host = make_host("refuse")
    units = {
        "lab-dbus.service": "[Service]\nType=dbus\nBusName=org.example.Lab\nExecStart=/bin/true\n",
        "lab-dyn.service": "[Service]\nDynamicUser=yes\nExecStart=/bin/true\n",
        "lab-nouser.service": "[Service]\nUser=nosuchuser\nExecStart=/bin/true\n",
        "lab-tick.timer": "[Timer]\nOnBootSec=1\n",
        "lab-cond.service": "[Unit]\nConditionKernelVersion=>1\n[Service]\nExecStart=/bin/true\n",
    }
    for name, text in units.items():
        host.path(f"{UNITS}/{name}").write_text(text)
        enable(host, name)
    report = host.reboot(check=False)
    assert sorted(report.failed) == [
        "lab-cond.service: cannot evaluate ConditionKernelVersion= (emulated: ConditionCapability, "
        "ConditionDirectoryNotEmpty, ConditionFileIsExecutable, ConditionFileNotEmpty, ConditionPathExists, "
        "ConditionPathExistsGlob, ConditionPathIsDirectory, ConditionPathIsSymbolicLink, "
        "ConditionVirtualization)",
        "lab-dbus.service: cannot emulate BusName=org.example.Lab",
        "lab-dyn.service: cannot emulate DynamicUser=yes",
        "lab-nouser.service: User=nosuchuser does not exist in the host's /etc/passwd",
        "lab-tick.timer: cannot emulate .timer units (only services)",
    ]
    assert not [s for s in report.started if s.startswith("lab-")]
    with pytest.raises(hostlab.LabError, match="lab-dbus.service: cannot emulate BusName"):
        host.reboot()


@pytest.fixture(scope="module")
def sd_host(lab):
    host = lab.create_host(f"sd-{os.getpid() % 10000}", labindex.next_index(), init="systemd")
    yield host
    host.destroy()
    assert not hostlab_systemd_cgroup(host.name).exists()


def hostlab_systemd_cgroup(name: str):
    import hostlab_systemd
    return hostlab_systemd.cgroup_dir(name)


def test_systemd_is_pid_1_of_a_systemd_host_and_boots_it_again(sd_host):
    host = sd_host
    assert host.exec(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"
    assert host.systemctl("is-system-running", "--wait", check=False).stdout.strip() == "running"
    setup_own_unit(host)
    host.path("/etc/supervisor/conf.d/lab-sleeper.conf").write_text(SLEEPER)
    host.path("/etc/nftables.conf").write_text(NFT_CONF)
    enable(host, "nftables.service", "sysinit.target", "/lib/systemd/system/nftables.service")
    host.systemctl("daemon-reload")
    host.systemctl("start", "lab-echo.service")
    assert page(host).strip() == "hello fromfile bootapp"
    old = host.pids()
    host.path("/run/stale-marker").write_text("before the reboot\n")

    report = host.reboot()

    assert not [p for p in old if hostlab._pid_alive(p)], "a process of the old boot survived"
    assert not host.path("/run/stale-marker").exists()
    assert host.ssh("echo up").stdout.strip() == "up"
    for unit in ("nginx.service", "supervisor.service", "lab-echo.service", "fdl-sshd.service",
                 "nftables.service"):
        assert unit in report.started, report.text()
        assert host.systemctl("is-active", unit).stdout.strip() == "active"
    assert host.http("/")[0] == 200
    assert page(host).strip() == "hello fromfile bootapp"
    main = int(host.systemctl("show", "-P", "MainPID", "lab-echo.service").stdout)
    assert host.exec(["stat", "-c", "%U", f"/proc/{main}"]).stdout.strip() == "bootapp"
    assert host.exec(["stat", "-c", "%U", f"/proc/{sleeper_pid(host)}"]).stdout.strip() == "bootapp"
    assert "table inet labboot" in nft_tables(host)
    # the machine's own /var is never written: the host's /var is an overlay
    assert not os.path.exists("/var/lib/lab-boot-probe")
    host.exec(["touch", "/var/lib/lab-boot-probe"])
    assert not os.path.exists("/var/lib/lab-boot-probe")
