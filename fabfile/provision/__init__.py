"""`fab provision`: a fresh Debian/Ubuntu or RHEL-family server made ready for `fab deploy` (issue 14).

system.py reads /etc/os-release into a System (family, package tool); packages.py plans the packages per
family; users.py, layout.py, services.py, manager_service.py ([app] manager's service), redis.py
([cache] redis) and sudoers.py (the `fab sudoers` drop-in) build the steps (each a check and an apply, shell lines);
steps.py turns steps into one script; run.py runs it per host and prints `ok` / `changed: <what>`.
"""
