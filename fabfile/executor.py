"""Parallel `fab -H a,b,c` for fabdeploy's tasks.

Fabric calls a task once per `-H` host, one after another (there is no -P in Fabric 2/3: invoke#63).
FleetExecutor instead makes ONE call of a fabdeploy task for all the -H hosts, which then runs them in
parallel (and, for deploy, two-phase). Other tasks (a team fabfile's own) keep Fabric's once-per-host calls.

No file is needed to select it: importing fabdeploy's tasks while `fab` loads the fabfile makes that run use
FleetExecutor (`use_fleet_executor`; Program.execute picks the executor after the fabfile is imported). A
`tasks.executor_class` in a Fabric config file wins over that; naming FleetExecutor there (or a subclass)
still works, another executor is refused by the first fabdeploy task it calls once per host
(`refuse_per_host_call`), before any host is touched. The `fabdeploy` command uses FleetExecutor always.
"""
from __future__ import annotations

import sys

from fabric import Connection
from fabric.executor import Executor
from fabric.main import Fab
from fabric.tasks import ConnectionCall
from invoke import Call, Program, Task
from invoke import Executor as InvokeExecutor

from fabdeploy.errors import ConfigError

# The config key carrying the -H hosts to a fabdeploy task called once for all of them (the run's config is
# what the executor and the task share).
HOSTS_KEY = "fabdeploy_cli_hosts"


def cli_hosts(context) -> list[str]:
    return list(context.config.get(HOSTS_KEY) or [])


def is_fleet_task(task) -> bool:
    """A fabdeploy task: it works on all the -H hosts in one call (marked by tasks.one_line_errors)."""
    return getattr(getattr(task, "body", None), "fabdeploy_fleet", False)


def _host_list(core) -> list[str]:
    value = core[0].args.hosts.value if "hosts" in core[0].args else None
    return [h.strip() for h in (value or "").split(",") if h.strip()]


class FleetExecutor(Executor):
    # What refuse_per_host_call looks for (this class and its subclasses).
    fabdeploy_fleet = True

    def expand_calls(self, calls, apply_hosts=True):
        """Fabric's expansion (one call per -H host, pre/post tasks, `-- command`), then each group of
        per-host calls of a fabdeploy task becomes one plain call that gets the -H hosts in the config.
        Words after `--` belong to a fabdeploy task that takes them (`fab manage -- createsuperuser`),
        not to Fabric's "run this command on every host"."""
        remainder = self.core.remainder
        takes_rest = bool(remainder) and any(
            getattr(getattr(c if isinstance(c, Task) else c.task, "body", None), "fabdeploy_remainder", False)
            for c in calls)
        if takes_rest:
            self.core.remainder = ""
        try:
            expanded = super().expand_calls(calls, apply_hosts=apply_hosts)
        finally:
            self.core.remainder = remainder
        raw = (self.core[0].args.hosts.value or "").split(",") if apply_hosts else []
        if not any(isinstance(c, ConnectionCall) and is_fleet_task(c.task) for c in expanded) or not raw:
            return expanded
        self.config[HOSTS_KEY] = _host_list(self.core)
        ret, seen = [], 0
        for call in expanded:
            if isinstance(call, ConnectionCall) and is_fleet_task(call.task):
                if seen % len(raw) == 0:  # Fabric makes len(raw) consecutive calls: keep the first, untied to a host
                    ret.append(Call(task=call.task, called_as=call.called_as, args=call.args, kwargs=call.kwargs))
                seen += 1
            else:
                ret.append(call)
        return ret


def _running(kind, method: str | None = None):
    """The `kind` object (a Program, an Executor) whose method is running further up this thread's stack."""
    frame = sys._getframe(1)
    while frame is not None:
        obj = frame.f_locals.get("self")
        if isinstance(obj, kind) and (method is None or frame.f_code.co_name == method):
            return obj
        frame = frame.f_back
    return None


def use_fleet_executor() -> None:
    """Called when fabdeploy's tasks are imported: if a `fab` program (fabric.main.program, or a team's own
    Fab) is loading its fabfile right now with Fabric's plain Executor, make it use FleetExecutor. The
    `invoke` command, the `fabdeploy` command and plain imports are left alone."""
    program = _running(Program, "load_collection")
    if isinstance(program, Fab) and program.executor_class is Executor:
        program.executor_class = FleetExecutor


def refuse_per_host_call(context, task_name: str) -> None:
    """A fabdeploy task called with one host's Connection by an executor that splits `-H a,b` into one call
    per host (a `tasks.executor_class` other than FleetExecutor): one line saying what to do, before any host
    is touched. A call with one -H host, or from a team task under FleetExecutor, goes on as before."""
    executor = _running(InvokeExecutor)
    if executor is None or getattr(executor, "fabdeploy_fleet", False) or not isinstance(context, Connection):
        return
    hosts = _host_list(executor.core) if executor.core else []
    if len(hosts) > 1:
        name = f"{type(executor).__module__}.{type(executor).__qualname__}"
        raise ConfigError(f"fab -H {','.join(hosts)} {task_name}: the executor {name} calls fabdeploy's tasks "
                          "once per host (no parallel two-phase run); use fabdeploy.executor.FleetExecutor or a "
                          "subclass of it as tasks.executor_class (e.g. in fabric.yaml next to your fabfile), "
                          "or set none")
