"""fabdeploy: deploy Django projects to uWSGI behind nginx with Fabric.

In a team fabfile::

    from fabdeploy.tasks import *   # deploy, ...
"""
from .tasks import deploy  # noqa: F401

__version__ = "0.1.0"
