"""The sudoers step: the drop-in `fab sudoers` prints (ops/sudoers.py, the root commands of remote/root.py
and each module's root_lines) for [provision] deploy_user, at /etc/sudoers.d/fabdeploy-<name>, root:root 0440.

On by default ([provision] sudoers = true): the deploy user provision creates is limited to what this
project's deploys run from the start. `[provision] sudoers_file` installs your own drop-in instead (e.g. an
edited `fab sudoers`), checked the same way. The new text is staged in /etc/sudoers.d under a name with a
'.' (sudo skips such files), checked with `visudo -c -f`, and only then renamed into place (atomic); the
whole configuration is checked again after the rename and the previous file put back if it fails. A drop-in
visudo refuses is never left in /etc/sudoers.d.
"""
from __future__ import annotations

from pathlib import Path

from fabdeploy.config import Config
from fabdeploy.errors import ConfigError
from fabdeploy.provision.layout import NGINX_GROUP
from fabdeploy.provision.steps import Step
from fabdeploy.remote.shell import q

SUDOERS_D = "/etc/sudoers.d"
PLACEHOLDER = "fabdeploy_nginx_group"  # in the generated text: the host's nginx group, put in on the host
VISUDO = "/usr/sbin/visudo"


def drop_in_path(cfg: Config) -> str:
    """/etc/sudoers.d/fabdeploy-<name>: sudo skips names with a '.', so a '.' of the name becomes '_'."""
    return f"{SUDOERS_D}/fabdeploy-{cfg.project.name.replace('.', '_')}"


def drop_in_text(cfg: Config) -> str:
    """[provision] sudoers_file's text (a path relative to the config file), else the generated drop-in."""
    if cfg.provision.sudoers_file:
        f = (cfg.path.parent if cfg.path else Path.cwd()) / cfg.provision.sudoers_file
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"provision.sudoers_file {cfg.provision.sudoers_file}: cannot read it "
                              f"({getattr(exc, 'strerror', None) or exc})") from None
        return text if text.endswith("\n") else text + "\n"
    from fabdeploy.ops.sudoers import drop_in
    return drop_in(cfg, cfg.provision.deploy_user, PLACEHOLDER)


def sudoers_steps(cfg: Config) -> list[Step]:
    """The drop-in installed and visudo-clean (none when [provision] sudoers = false; a skipped step when the
    config uses what a drop-in cannot list, e.g. the uWSGI emperor, and no sudoers_file is given)."""
    if not cfg.provision.sudoers:
        return []
    if not cfg.provision.sudoers_file:
        from fabdeploy.ops.sudoers import uncovered
        if uncovered(cfg):
            return [Step("sudoers", [], skip=f"{uncovered(cfg)[0].split(':')[0]} needs more than a drop-in lists: "
                                             "give the deploy user sudo yourself, or set provision.sudoers_file")]
    text = drop_in_text(cfg)
    path = drop_in_path(cfg)
    name = path.rsplit("/", 1)[1]
    staged, old = f"{SUDOERS_D}/.{name}.new", f"{SUDOERS_D}/.{name}.old"
    delim = "FABDEPLOY_SUDOERS_EOF"
    while delim in text:
        delim += "_"
    # $want: the text with the host's own nginx group ($ng, as the layout step finds it) for PLACEHOLDER
    want = [NGINX_GROUP, f'want=$(sed "s/{PLACEHOLDER}/$ng/g" <<\'{delim}\'\n{text}{delim}\n)']
    check = [*want, f'[ "$(cat {q(path)} 2>/dev/null)" = "$want" ] && '
             f'[ "$(stat -c %U:%G:%a {q(path)})" = root:root:440 ]']
    apply = [*want, f"rm -f {q(staged)} {q(old)}",
             f"(umask 077; printf '%s\\n' \"$want\" > {q(staged)})",
             f"chmod 0440 {q(staged)}",
             f"if ! out=$({VISUDO} -c -f {q(staged)} 2>&1); then rm -f {q(staged)}; "
             f"echo \"visudo -c refused the drop-in, nothing installed: $(printf '%s\\n' \"$out\" | "
             f"grep -v 'parsed OK' | head -n 1)\"; exit 1; fi",
             f"[ ! -e {q(path)} ] || cp -p {q(path)} {q(old)}",
             f"mv -f {q(staged)} {q(path)}",
             f"if ! out=$({VISUDO} -c 2>&1); then "
             f"if [ -e {q(old)} ]; then mv -f {q(old)} {q(path)}; else rm -f {q(path)}; fi; "
             f"echo \"visudo -c refused the configuration with the drop-in, the previous state kept: "
             f"$(printf '%s\\n' \"$out\" | grep -v 'parsed OK' | head -n 1)\"; exit 1; fi",
             f"rm -f {q(old)}"]
    return [Step("sudoers", check, apply, what=f"{path} installed (visudo -c clean)")]
