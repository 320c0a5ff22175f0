"""front/nginx_toggle.SCAN_LINE: nginx.conf read once by the shell (dash and bash), no grep/sed/head; what it
finds is what the sed and grep it replaced found (`sed -n 's/^[[:space:]]*pid[[:space:]][[:space:]]*
\\([^[:space:];]*\\).*/\\1/p' | head -n 1`, the same for user, `grep -qs sites-enabled`)."""
from __future__ import annotations

import subprocess

import pytest

from fabdeploy.front import nginx_toggle
from fabdeploy.hosts.layout import NGINX_CONF, NGINX_PID

SED = r"s/^[[:space:]]*{}[[:space:]][[:space:]]*\([^[:space:];]*\).*/\1/p"

CONFS = {
    "debian": "user www-data;\nworker_processes auto;\npid /run/nginx.pid;\nerror_log /var/log/nginx/error.log;\n"
              "include /etc/nginx/modules-enabled/*.conf;\nevents {\n\tworker_connections 768;\n}\nhttp {\n"
              "\tinclude /etc/nginx/conf.d/*.conf;\n\tinclude /etc/nginx/sites-enabled/*;\n}\n",
    "rhel": "user nginx;\nworker_processes auto;\n# pid /commented.pid;\npid /run/nginx.pid;\nhttp {\n"
            "    include /etc/nginx/conf.d/*.conf;\n}\n",
    "tabs_and_spaces": "  \tuser   web  ;\n\tpid\t/var/run/x.pid;  # a comment\nhttp { include /etc/nginx/sites-enabled/*; }",
    "no_trailing_newline": "worker_processes 1;\nhttp {\n include /etc/nginx/sites-enabled/*.conf; }",
    "none": "events {}\nhttp {}\n",
    "empty": "",
    "two_pids": "pid /first.pid;\npid /second.pid;\nuser a;\nuser b;\n",
    "lab": "user nobody;pid /elsewhere.pid;\n",
}


def _scan(conf_text: str, shell: str, tmp_path) -> tuple[str, str, str]:
    conf = tmp_path / "nginx.conf"
    conf.write_text(conf_text)
    line = nginx_toggle.SCAN_LINE.replace(NGINX_CONF, str(conf))
    out = subprocess.run([shell, "-c", f"set -eu\n{line}\necho \"$fd_nu|$nginx_pid|$fd_se\""],
                         capture_output=True, text=True, check=True).stdout.strip()
    return tuple(out.split("|"))


def _reference(conf_text: str, tmp_path) -> tuple[str, str, str]:
    conf = tmp_path / "ref.conf"
    conf.write_text(conf_text)

    def first(word):
        return subprocess.run(f"sed -n '{SED.format(word)}' {conf} | head -n 1", shell=True, capture_output=True,
                              text=True).stdout.strip()
    grep = subprocess.run(["grep", "-qs", "sites-enabled", str(conf)]).returncode == 0
    return first("user"), first("pid") or NGINX_PID, "1" if grep else ""


@pytest.mark.parametrize("shell", ["dash", "bash"])
@pytest.mark.parametrize("name", sorted(CONFS))
def test_the_scan_finds_what_sed_and_grep_found(name, shell, tmp_path):
    assert _scan(CONFS[name], shell, tmp_path) == _reference(CONFS[name], tmp_path)


def test_a_missing_or_unreadable_conf_leaves_the_defaults_and_does_not_stop_a_set_e_script(tmp_path):
    line = nginx_toggle.SCAN_LINE.replace(NGINX_CONF, str(tmp_path / "missing.conf"))
    out = subprocess.run(["dash", "-c", f"set -eu\n{line}\necho \"[$fd_nu|$nginx_pid|$fd_se]\""],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == f"[|{NGINX_PID}|]"


def test_it_runs_no_program():
    assert not any(p in nginx_toggle.SCAN_LINE for p in ("sed ", "grep ", "head ", "$("))
