"""Per-release static roots (shared/static/<release>) and the `current` link the web server serves."""
from __future__ import annotations

from fabdeploy.config import Config
from fabdeploy.hosts.layout import Layout
from fabdeploy.remote.shell import q


def seed_static(cfg: Config, release_id: str) -> list[str]:
    """Create the release's own static root, seeded with hard links from the live one. collectstatic (or
    tar, on a balancer) replaces a changed file with a new inode, so the live site's files are never
    modified, and the new root keeps the old release's files too."""
    st = Layout(cfg.paths.deploy_to).static
    S = f"{st}/{release_id}"
    return [f"rm -rf {q(S)}",
            # (not cp -a: preserving modes would chmod the new directories, which drops the setgid bit
            # that gives new files the web server's group; plain mkdir inherits it)
            f"if [ -d {q(st + '/current/')} ]; then cp -Rl --preserve=timestamps \"$(readlink -f {q(st + '/current')})\" {q(S)}; "
            f"else mkdir -p {q(S)}; fi"]



def static_switch(cfg: Config, release_word: str) -> list[str]:
    """Point shared/static/current at the release's static root (atomically), when it has one."""
    st = Layout(cfg.paths.deploy_to).static
    return [f"if [ -d {q(st)}/{release_word} ]; then ln -sfn {release_word} {q(st + '/current.fabdeploy-tmp')} && "
            f"mv -Tf {q(st + '/current.fabdeploy-tmp')} {q(st + '/current')}; fi"]
