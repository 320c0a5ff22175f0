"""Pruning old releases and what they used; removing what an abandoned deploy built."""
from __future__ import annotations

from fabdeploy import appserver
from fabdeploy.appserver import beside
from fabdeploy.config import Config
from fabdeploy.front.nginx import site_restore
from fabdeploy.hosts.layout import Layout
from fabdeploy.model import UNUSABLE_FN, Facts, Release
from fabdeploy.remote.markers import note, warn
from fabdeploy.remote.script import Phase
from fabdeploy.remote.shell import ALIVE_FN, AS_APP, IS_RELEASE_FN, READ_LINE_FN, q, stop_group


def prune_lines(keep: int, remove: str = 'rm -rf -- "$r"') -> list[str]:
    """In a directory of release-named entries (the cwd; $cur the one in use): keep `keep` of them and
    remove the rest (`remove`, with the entry in $r), counting them in $removed. Always kept: $cur and (with
    keep >= 2) the way back, the newest entry older than $cur that is usable (not marked bad, not pending),
    which is what a rollback picks. The other places go to the newest entries, usable ones first."""
    back = [
        "back=; seen=",
        "for r in $all; do",
        '  if [ -n "$seen" ] && [ -z "$back" ] && ! unusable "$r"; then back=$r; fi',
        '  [ "$r" != "$cur" ] || seen=1',
        "done",
    ] if keep >= 2 else ["back="]
    return [
        "removed=0",
        UNUSABLE_FN,
        IS_RELEASE_FN,
        'all=; for r in *; do if is_release "$r"; then all="$r $all"; fi; done',  # newest first (a glob sorts)
        *back,
        "kept=0",
        'for r in $all; do if [ "$r" = "$cur" ] || [ "$r" = "$back" ]; then kept=$((kept + 1)); fi; done',
        'good=$(for r in $all; do unusable "$r" || echo "$r"; done)',
        'bad=$(for r in $all; do ! unusable "$r" || echo "$r"; done)',
        "for r in $good $bad; do",
        '  if [ "$r" = "$cur" ] || [ "$r" = "$back" ]; then continue; fi',
        f'  if [ "$kept" -lt {int(keep)} ]; then kept=$((kept + 1)); else {remove}; removed=$((removed + 1)); fi',
        "done",
    ]



TRASH_PARENTS = ("releases", "venvs", "static", "tmp")  # (Layout properties: where cleanup removes things)


def trash_lines(lay: Layout, run: str) -> list[str]:
    """`gone PARENT PATH NAME` (PARENT one of TRASH_PARENTS): PATH renamed into the trash (Layout.trash/<run>/
    NAME) when PARENT is on deploy_to's filesystem (a rename never copies), else removed at once; then
    `empty_trash` removes the trash in the background: a pruned release's `rm -rf` took 0.1 s of the deploy's
    critical path, a rename is one system call. Its errors go to shared/log/trash.log; a trash still there
    with errors logged is said at the next cleanup."""
    to, log = f"{lay.trash}/{run}", f"{lay.log}/trash.log"
    return [
        f"if [ -s {q(log)} ] && [ -d {q(lay.trash)} ]; then "
        + warn(f"{lay.trash} could not be removed: $(tail -n 1 {q(log)})") + "; fi",
        "trash_ok=' ' trash_made=",
        f"set -- $(stat -L -c %d {q(lay.deploy_to)} {' '.join(q(getattr(lay, p)) for p in TRASH_PARENTS)} "
        "2>/dev/null || true)",
        f'if [ "$#" -eq {len(TRASH_PARENTS) + 1} ]; then',
        f'  trash_dev=$1; shift; for p in {" ".join(TRASH_PARENTS)}; do '
        '[ "$1" != "$trash_dev" ] || trash_ok="$trash_ok$p "; shift; done',
        "fi",
        "gone() {",
        '  case $trash_ok in *" $1 "*)',
        f'    if {{ [ -n "$trash_made" ] || mkdir -p {q(to)}; }} && mv -T -- "$2" {q(to)}/"$3" 2>/dev/null; then '
        "trash_made=1; return 0; fi;;",
        "  esac",
        '  rm -rf -- "$2"',
        "}",
        "empty_trash() {",
        '  [ -n "$trash_made" ] || return 0',
        f"  if [ -d {q(lay.log)} ]; then tl={q(log)}; else tl=/dev/null; fi",
        f'  (cd / && setsid nohup rm -rf -- {q(lay.trash)} </dev/null >/dev/null 2>"$tl" &)',
        "}",
    ]


def cleanup(cfg: Config, rel: Release) -> Phase:
    """Keep keep_releases releases (always current and the release a rollback would go back to; releases
    marked bad go first) and the virtualenvs they or the running master use. What goes is renamed into the
    trash and removed in the background (trash_lines)."""
    lay = Layout(cfg.paths.deploy_to)
    app = appserver.of(cfg)
    keep = cfg.paths.keep_releases
    return Phase("cleanup", [
        *app.as_app_lines(cfg),
        ALIVE_FN,
        *trash_lines(lay, rel.id),
        f"cd {q(lay.releases)}",
        f"cur=$(readlink {q(lay.current)} || true); cur=${{cur##*/}}",
        *prune_lines(keep, f'gone releases {q(lay.releases)}/"$r" "r.$r"'),
        READ_LINE_FN,
        'used=; for f in */.fabdeploy/venv; do read_line v "$f"; used="$used $v"; done',
        f"cd {q(lay.venvs)}",
        "exe=-",
        "for v in *; do",
        '  [ -d "$v" ] || continue',
        '  case " $used " in *" $v "*) continue;; esac',
        # (the running master's binary, read once a venv no release uses is found: a redeploy that reuses its
        # venv reads nothing as the app user)
        f'  if [ "$exe" = - ]; then pid=$(alive {q(app.paths(lay).pidfile)} {app.process} || true); '
        f'exe=$( [ -n "$pid" ] && {AS_APP} readlink "/proc/$pid/exe" || true); fi',
        f'  case "$exe" in {q(lay.venvs)}/"$v"/*) continue;; esac',
        f'  gone venvs {q(lay.venvs)}/"$v" "v.$v"',
        "done",
        # static roots of releases that are gone
        f"if cd {q(lay.static)} 2>/dev/null; then",
        "  for s in *; do",
        f'    if is_release "$s" && [ ! -d {q(lay.releases)}/"$s" ]; then '
        f'gone static {q(lay.static)}/"$s" "s.$s"; fi',
        "  done",
        "fi",
        f"if [ -e {q(lay.staging(rel.id))} ]; then gone tmp {q(lay.staging(rel.id))} staging; fi",
        "empty_trash",
        f'left=0; for r in {q(lay.releases)}/*; do if is_release "${{r##*/}}"; then left=$((left + 1)); fi; done',
        note(f"$left releases on disk (keep_releases = {keep}), removed $removed"),
    ])



def abandon(cfg: Config, rel: Release, pgid: int | None = None, held: str = "true",
            facts: Facts | None = None) -> Phase:
    """After a failure or interrupt before the switch: stop what the interrupted script still runs (its
    process group), then remove the half-built release and staged files (never the current release), but
    only while `held` (a shell condition: this run holds the deploy lock); a run refused by another one's
    lock changes nothing (the release id and files may be that run's)."""
    lay = Layout(cfg.paths.deploy_to)
    R = lay.release(rel.id)
    return Phase("abandon", [
        *stop_group(pgid),
        f"if ! {held}; then " + note("another run holds the deploy lock: nothing of this run to remove") + "; exit 0; fi",
        f'if [ "$(readlink {q(lay.current)})" != {q(R)} ]; then',
        *["  " + ln for ln in beside.abandon_lines(cfg, rel)],  # (its master, started early, never served)
        f'  rm -rf {q(R)} {q(lay.static + "/" + rel.id)} || true',
        "fi",
        *(site_restore(cfg, facts, lay.staging(rel.id)) if facts else []),
        f"rm -rf {q(lay.staging(rel.id))} || true",
    ])



def drop_staging(cfg: Config, release_id: str) -> Phase:
    """After a failure past the switch (the health gate reverted, or a later phase failed): remove the
    release's staged files under tmp/ (site copies, anything uploaded)."""
    return Phase("abandon", [f"rm -rf {q(Layout(cfg.paths.deploy_to).staging(release_id))} || true"])
