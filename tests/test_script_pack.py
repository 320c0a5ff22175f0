"""Large remote scripts: sshd hands the whole command to the user's shell as one argument, which Linux limits
to 128 KiB (MAX_ARG_STRLEN). Script.command() sends a script over 64 KiB packed (gzip + base64, run by eval:
remote/shell.py), the same pack() the detached wrapper and the benchmark use. Run here with bash -c, as sshd
runs it; the e2e run over SSH is test_control_e2e's test_a_script_over_128_kib_runs_over_ssh."""
from __future__ import annotations

import os
import subprocess

import pytest

from fabdeploy.errors import FabdeployError
from fabdeploy.remote import detach
from fabdeploy.remote.markers import MARK, fail_expanded
from fabdeploy.remote.script import Phase, Script
from fabdeploy.remote.shell import PACK_OVER, pack, q


def big_script(n: int = 3000, last: list[str] | None = None) -> Script:
    filler = [f": line {i} of a big restart script, padding it beyond MAX_ARG_STRLEN" for i in range(n)]
    return Script([Phase("big", [*filler, 'echo "stdin: $(wc -c)"', "echo done"]),
                   Phase("after", last or ["echo after"])])


def run(command: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], input=stdin, capture_output=True, timeout=60)


def test_a_small_script_is_sent_as_is():
    script = Script([Phase("one", ["echo hi"])])
    assert script.command() == "sh -c " + q(script.text())


def test_a_script_over_128_kib_is_packed_and_runs_in_one_shell_with_its_stdin_markers_and_status():
    script = big_script()
    assert len(script.text()) > 131072
    with pytest.raises(OSError):  # (as it was sent before: E2BIG, "Argument list too long")
        run("sh -c " + q(script.text()))
    command = script.command()
    assert len(command) < PACK_OVER and command.endswith(" " + pack(script.text()))
    proc = run(command, stdin=b"x" * 100_000)  # (stdin, the release archive, still reaches the script)
    assert proc.returncode == 0, proc.stderr
    out = [ln for ln in proc.stdout.decode().splitlines() if not ln.startswith(f"{MARK} pgid")]
    assert out == [f"{MARK} begin big", "stdin: 100000", "done", f"{MARK} end big 0",
                   f"{MARK} begin after", "after", f"{MARK} end after 0"]
    failing = big_script(last=["echo oops >&2", fail_expanded("it broke", 3)])
    proc = run(failing.command())
    assert proc.returncode == 3 and f"{MARK} error it broke" in proc.stderr.decode()


def test_a_script_packing_cannot_bring_under_the_limit_is_refused_with_one_line():
    script = Script([Phase("huge", [f": {os.urandom(100_000).hex()}"])])
    with pytest.raises(FabdeployError) as exc:
        script.command()
    assert str(exc.value).startswith("the remote script of huge is ") and "\n" not in str(exc.value)


def test_the_detached_wrapper_carries_the_same_packed_text():
    assert detach.command("/tmp/p", "echo hi\n").endswith(" fabdeploy " + pack("echo hi\n"))
