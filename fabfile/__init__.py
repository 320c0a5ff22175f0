"""fabdeploy: deploy Django projects to uWSGI behind nginx with Fabric.

In a team fabfile::

    from fabdeploy.tasks import *   # deploy, rollback, releases, status, logs, unlock, manage
"""
from .tasks import deploy, logs, manage, releases, rollback, status, unlock  # noqa: F401

__version__ = "0.1.0"
