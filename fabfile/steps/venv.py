"""The venv phase: the release's virtualenv, reused while the requirements hash is unchanged."""
from __future__ import annotations

from fabdeploy import appserver, database
from fabdeploy.config import Config
from fabdeploy.hosts.layout import VENV_COMPLETE, Layout
from fabdeploy.local.requirements import listed, normalize
from fabdeploy.model import Release
from fabdeploy.remote.markers import fail, fail_expanded, note
from fabdeploy.remote.script import Phase
from fabdeploy.remote.shell import q


def venv_install_args(cfg: Config, rel: Release, staging: str) -> list[str]:
    args = ["install", "--disable-pip-version-check", "--no-input", "-q"]
    if rel.has_wheels:
        args += ["--no-index", "--find-links", f"{staging}/wheels"]
    elif cfg.pip.index_url:
        args += ["--index-url", cfg.pip.index_url]
    if cfg.project.requirements:
        args += ["-r", cfg.project.requirements]
    args += [*cfg.pip.packages, *appserver.of(cfg).requirements(cfg), *database.requirements(cfg)]
    return args



def pip_missing_lines(rel: Release, files: dict[str, bytes]) -> list[str]:
    """After a failed pip install (its output in $out): name the requirement pip found no distribution for,
    with the file and environment marker that list it (a marker that excluded it from the wheelhouse)."""
    where = "in the uploaded wheelhouse" if rel.has_wheels else "for this host"
    lines = [
        "missing=$(printf '%s\\n' \"$out\" | sed -n 's/.*No matching distribution found for "
        "\\([A-Za-z0-9][A-Za-z0-9._-]*\\).*/\\1/p' | head -n 1)",
        'if [ -n "$missing" ]; then',
        "  case \"$(printf '%s' \"$missing\" | sed 's/[-_.][-_.]*/-/g' | tr 'A-Z' 'a-z')\" in",
    ]
    for name, (path, line, marker) in sorted(listed(files).items()):
        if marker:
            why = (f"pip found no distribution of {name} {where}: {path} requires it with the marker "
                   f"'{marker}'" + (", which excluded it when the wheelhouse was built" if rel.has_wheels else ""))
        else:
            why = f"pip found no distribution of {name} {where} ({path}: {line})"
        lines.append(f"    {q(normalize(name))}) {fail(why)};;")
    lines += [f"    *) {fail_expanded(f'pip found no distribution of $missing {where}')};;",
              "  esac",
              "fi"]
    return lines



def venv(cfg: Config, rel: Release, requirement_files: dict[str, bytes] | None = None) -> Phase:
    """Reuse the virtualenv keyed by the requirements hash, or build it beside the old ones. The uploaded
    wheels are removed once used (a failed deploy leaves none under tmp/)."""
    lay = Layout(cfg.paths.deploy_to)
    V, R = lay.venv(rel.venv_hash), lay.release(rel.id)
    pip = " ".join(q(a) for a in venv_install_args(cfg, rel, lay.staging(rel.id)))
    lines = [
        f"if [ -f {q(V + '/' + VENV_COMPLETE)} ]; then",
        "  " + note(f"reused {rel.venv_hash}"),
        "else",
        f"  cd {q(R)}",
        f"  rm -rf {q(V)}",
        f"  {q(cfg.project.python)} -m venv {q(V)}",
        f"  if ! out=$({q(V + '/bin/python')} -m pip {pip} 2>&1); then",
        f"    rm -rf {q(lay.staging(rel.id) + '/wheels')}",
        "    printf '%s\\n' \"$out\" | tail -n 20 >&2",
        *["    " + ln for ln in pip_missing_lines(rel, requirement_files or {})],
        "    exit 1",
        "  fi",
        f"  touch {q(V + '/' + VENV_COMPLETE)}",
        "  " + note(f"built {rel.venv_hash}" + (" from the wheelhouse" if rel.has_wheels else "")),
        "fi",
        f"rm -rf {q(lay.staging(rel.id) + '/wheels')}",
    ]
    return Phase("venv", lines)
