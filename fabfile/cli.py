"""`fabdeploy` console script: the fab command line with fabdeploy's tasks, for projects without a fabfile."""
from fabric.main import Fab
from fabric.config import Config
from invoke import Collection

from fabdeploy import __version__, tasks
from fabdeploy.executor import FleetExecutor


def main():
    ns = Collection.from_module(tasks)
    program = Fab(name="fabdeploy", version=__version__, namespace=ns, executor_class=FleetExecutor,
                  config_class=Config)
    program.run()
