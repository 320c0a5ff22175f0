"""Parallel `fab -H a,b,c` for fabdeploy's tasks.

Fabric calls a task once per `-H` host, one after another (there is no -P in Fabric 2/3: invoke#63).
FleetExecutor instead makes ONE call of a fabdeploy task for all the -H hosts, which then runs them in
parallel (and, for deploy, two-phase). Other tasks keep Fabric's behaviour. Select it once per project, in
a `fabric.yaml` next to your fabfile::

    tasks:
      executor_class: fabdeploy.executor.FleetExecutor

(the `fabdeploy` command uses it always).
"""
from __future__ import annotations

from fabric.executor import Executor
from invoke import Call, Task

# The config key carrying the -H hosts to a fabdeploy task called once for all of them (a config key, not a
# module global: in this repository the tasks load as `fabfile.*` while fab imports `fabdeploy.executor`).
HOSTS_KEY = "fabdeploy_cli_hosts"


def cli_hosts(context) -> list[str]:
    return list(context.config.get(HOSTS_KEY) or [])


class FleetExecutor(Executor):
    def expand_calls(self, calls, apply_hosts=True):
        host_str = self.core[0].args.hosts.value if apply_hosts else ""
        fleet, other = [], []
        for call in calls:
            task = call if isinstance(call, Task) else call.task
            # (with words after `--` and no -H, Fabric would refuse: "a command but no hosts"; `fab manage -- ARGS`
            # takes its hosts from deploy.toml)
            mine = getattr(task.body, "fabdeploy_fleet", False) and (host_str or self.core.remainder)
            (fleet if mine else other).append(call)
        if fleet:
            self.config[HOSTS_KEY] = [h.strip() for h in (host_str or "").split(",") if h.strip()]
        ret = []
        for call in calls:
            if call in fleet:
                ret.append(call if isinstance(call, Call) else Call(task=call))
            else:
                ret.extend(super().expand_calls([call], apply_hosts=apply_hosts))
        return ret
