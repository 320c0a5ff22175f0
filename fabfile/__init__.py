"""fabdeploy: deploy Django projects to uWSGI behind nginx with Fabric.

In a team fabfile::

    from fabdeploy.tasks import *   # deploy, rollback, db, releases, status, logs, unlock, manage, doctor,
                                    # stop, start, restart, reload, provision, secrets, sudoers, disconnect

Every module has one name, `fabdeploy.<...>`: `fab` in this repository imports this folder as the package
`fabfile`, which then only hands over the tasks of `fabdeploy` (loaded from this same folder when it is not
installed) and has no submodules of its own, so no module is ever loaded twice under two names.
"""
__version__ = "0.1.0"

if __name__ == "fabdeploy":
    from fabdeploy.tasks import (db, deploy, disconnect, doctor, logs, manage, provision, releases, reload, restart, rollback, secrets, sudoers,  # noqa: F401,E501
                                 start, status, stop, unlock)
else:  # imported as `fabfile` (fab in this repository)
    import importlib.util as _util
    import os as _os
    import sys as _sys

    if "fabdeploy" not in _sys.modules:
        _spec = _util.find_spec("fabdeploy")
        _here = _os.path.dirname(_os.path.abspath(__file__))
        if _spec is None or _os.path.dirname(_os.path.abspath(_spec.origin or "")) != _here:
            _spec = _util.spec_from_file_location("fabdeploy", __file__, submodule_search_locations=[_here])
        _module = _util.module_from_spec(_spec)
        _sys.modules["fabdeploy"] = _module
        _spec.loader.exec_module(_module)
    from fabdeploy.tasks import (db, deploy, disconnect, doctor, logs, manage, provision, releases, reload, restart, rollback, secrets, sudoers,  # noqa: F401,E501
                                 start, status, stop, unlock)
    __path__ = []  # no `fabfile.<module>`: each module is loaded once, as fabdeploy.<module>
