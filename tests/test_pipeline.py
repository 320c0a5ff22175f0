"""The declared pipeline (fabdeploy.pipeline): hooks land inside the phases that run them, on load balancers
and in a rollback as on app hosts. Pure script building, no SSH: each hooked phase is compared with the same
phase built without hooks, so the hook blocks are exactly what sits before and after its body."""
from __future__ import annotations

import pytest

from fabdeploy import hooks, pipeline
from fabdeploy.hosts.target import Target
from fabdeploy.model import Facts
from fabdeploy.steps.lock import LockOwner
from test_phases import REL_ID, make_cfg

OWNER = LockOwner("deploy", "tester", "0123456789abcdef", 4242, "2026-01-01T00:00:00Z")
HOOKS = {
    "before_setup": ["echo before-setup"],
    "after_config": ["echo after-config"],
    "before_switch": ["echo before-switch"],
    "after_switch": ["echo after-switch"],
    "before_restart": {"lb": ["echo lb-only"], "app": ["echo app-only"]},
    "after_restart": ["echo after-restart"],
    "after_cleanup": ["echo after-cleanup"],
}


@pytest.fixture(autouse=True)
def _clean_registry():
    hooks.clear()
    yield
    hooks.clear()


def state(kind: str, cfg) -> pipeline.RunState:
    target = Target.named(cfg, "web1", "lb" if kind == "lb" else "app")
    if kind == "rollback":
        return pipeline.RunState(cfg, target, OWNER, "")
    return pipeline.RunState(cfg, target, OWNER, REL_ID, facts=Facts())


def phases(kind: str, name: str, cfg) -> dict[str, list[str]]:
    built = pipeline.script(kind, name, state(kind, cfg))
    return {ph.name: ph.lines for ph in built.phases}


def around(hooked: list[str], plain: list[str]) -> tuple[str, str]:
    """The text before and after the unhooked body inside the hooked phase (the body must be there, whole)."""
    n = len(plain)
    for i in range(len(hooked) - n + 1):
        if hooked[i:i + n] == plain:
            return "\n".join(hooked[:i]), "\n".join(hooked[i + n:])
    raise AssertionError("the phase's own lines are not inside the hooked phase")


def test_balancer_finish_runs_the_restart_and_cleanup_hooks_inside_those_phases():
    hooked, plain = phases("lb", "finish", make_cfg(hooks=HOOKS)), phases("lb", "finish", make_cfg())
    assert list(hooked) == list(plain) == ["config", "restart", "health", "cleanup", "finish"]
    before, after = around(hooked["restart"], plain["restart"])
    assert "echo lb-only" in before and "echo after-restart" not in before
    assert "echo after-restart" in after and "echo lb-only" not in after
    assert "echo app-only" not in "\n".join(hooked["restart"])  # the table's app list is not for a balancer
    for env in ("FABDEPLOY_ROLE=lb", "FABDEPLOY_ACTION=deploy", f"FABDEPLOY_RELEASE={REL_ID}"):
        assert env in before and env in after
    before, after = around(hooked["cleanup"], plain["cleanup"])
    assert before == "" and "echo after-cleanup" in after
    # the config hooks ran with the prepare invocation's site install: finish's reinstall has none; the
    # balancer has no switch, and health and finish are not hookable
    for name in ("config", "health", "finish"):
        assert hooked[name] == plain[name], name
    assert "echo after-config" in "\n".join(phases("lb", "prepare", make_cfg(hooks=HOOKS))["config"])
    assert "echo before-setup" in "\n".join(phases("lb", "setup", make_cfg(hooks=HOOKS))["setup"])
    text = "\n".join(line for lines in hooked.values() for line in lines)
    assert "echo before-switch" not in text and "echo after-switch" not in text


def test_python_hooks_follow_their_roles_on_the_balancer():
    hooks.after("restart", roles=("lb",))(lambda ctx: [f"echo py-lb {ctx.role} {ctx.release_id}"])
    hooks.after("restart", roles="app")(lambda ctx: ["echo py-app"])
    hooked = phases("lb", "finish", make_cfg())
    hooks.clear()
    before, after = around(hooked["restart"], phases("lb", "finish", make_cfg())["restart"])
    assert before == "" and f"echo py-lb lb {REL_ID}" in after and "echo py-app" not in after


def test_rollback_runs_the_switch_hooks_around_its_switch_and_the_restart_hooks_around_its_reload():
    hooked, plain = phases("rollback", "rollback", make_cfg(hooks=HOOKS)), phases("rollback", "rollback", make_cfg())
    assert list(hooked) == list(plain) == ["lock", "rollback", "restart", "health", "finish"]
    before, after = around(hooked["rollback"], plain["rollback"])
    assert "echo before-switch" in before and "echo after-switch" not in before
    assert "echo after-switch" in after and "echo before-switch" not in after
    before, after = around(hooked["restart"], plain["restart"])
    assert "echo app-only" in before and "echo lb-only" not in before  # the app host's list of the table
    assert "echo after-restart" in after
    for block in (before, after):
        assert "FABDEPLOY_ROLE=app" in block and "FABDEPLOY_ACTION=rollback" in block
        # the release is the one `current` points at when the hook runs (picked on the host)
        assert "FABDEPLOY_RELEASE_PATH=$(readlink /srv/shop/current" in block
        assert "FABDEPLOY_RELEASE=" + REL_ID not in block
    for name in ("lock", "finish"):
        assert hooked[name] == plain[name], name
    text = "\n".join(line for lines in hooked.values() for line in lines)
    for absent in ("echo before-setup", "echo after-config", "echo after-cleanup"):
        assert absent not in text  # phases a rollback does not run
