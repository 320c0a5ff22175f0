"""fabdeploy: deploy Django projects to uWSGI behind nginx with Fabric.

In a team fabfile::

    from fabdeploy.tasks import *   # deploy, rollback, releases, status, logs, unlock
"""
from .tasks import deploy, logs, releases, rollback, status, unlock  # noqa: F401

__version__ = "0.1.0"
