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


# What runs pip for a virtualenv built without one (prints a path for `V/bin/python PATH`, "" for none): the
# interpreter's installed pip when it has one in a directory, through its __pip-runner__.py (pip >= 22.3: "run
# exactly this copy of pip within a different environment", what pip's own --python does), whose modules are
# compiled once on disk (Debian's python3-pip); else pip's documented `python <wheel>/pip` with the newest pip
# wheel the interpreter's own ensurepip would install (its _bundled dir, the distribution's WHEEL_PKG_DIR:
# /usr/share/python-wheels on Debian, Ubuntu and Fedora), else the newest in the distributions' shared dirs. A
# pip run from its zip compiles its own modules in memory on every run: 0.73 s for `pip --version` against
# 0.19 s, and 2.32 s against 1.53 s for the sample's install (Debian 12's pip 23.0.1 both ways, measured here).
PIP_RUN_PY = r"""
import glob, os, re, sysconfig
def newest(dirs):
    found = [(tuple(int(n) for n in m.group(1).split(".")), w) for d in dirs if d
             for w in glob.glob(os.path.join(d, "pip-*.whl"))
             for m in [re.match(r"pip-([0-9]+(?:[.][0-9]+)*)-", os.path.basename(w))] if m]
    return max(found)[1] if found else ""
try:
    import pip
    runner = os.path.join(os.path.dirname(os.path.abspath(pip.__file__)), "__pip-runner__.py")
except Exception:
    runner = ""
if runner and os.path.isfile(runner):
    print(runner)
else:
    try:
        import ensurepip
        own = [os.path.join(os.path.dirname(ensurepip.__file__), "_bundled")]
    except ImportError:
        own = []
    wheel = (newest(own + [sysconfig.get_config_var("WHEEL_PKG_DIR") or ""])
             or newest(["/usr/share/python-wheels", "/usr/share/python3-wheels"]))
    print(wheel + "/pip" if wheel else "")
""".strip()


PIP_RUN_FILE = "fabdeploy-pip"  # in the venv: what its bin/pip runs (an installed pip's runner, or a wheel's pip)
PIP_WRAPPER = [
    "#!/bin/sh",
    "# fabdeploy built this virtualenv without pip (seconds faster): this runs the host's pip (installed, else its wheel)",
    f'd=$(dirname "$0"); r=$(cat "$d/../{PIP_RUN_FILE}")',
    '[ -f "${r%/pip}" ] || { echo "pip: ${r%/pip} is gone; give this virtualenv its own pip: $d/python -m ensurepip" >&2; '
    'exit 1; }',
    'exec "$d/python" "$r" "$@"',
]


def build_lines(py: str, V: str) -> list[str]:
    """Create the virtualenv V and define venv_pip (pip for V). With a pip on the host (PIP_RUN_PY: an installed
    one, else a wheel): `-m venv --without-pip` (0.1 s; ensurepip's pip + setuptools install costs seconds) and
    that pip run by V's python, and V/bin/pip a wrapper of it (users inspect with venv/bin/pip); without one:
    `-m venv` with ensurepip's pip, as before."""
    pip = V + "/bin/pip"
    return [
        f"piprun=$({q(py)} -c {q(PIP_RUN_PY)} 2>/dev/null) || piprun=",
        'if [ -n "$piprun" ]; then',
        f"  {q(py)} -m venv --without-pip {q(V)}",
        f"  venv_pip() {{ {q(V + '/bin/python')} \"$piprun\" \"$@\"; }}",
        f"  printf '%s\\n' \"$piprun\" > {q(V + '/' + PIP_RUN_FILE)}",
        f"  printf '%s\\n' {' '.join(q(ln) for ln in PIP_WRAPPER)} > {q(pip)}",
        f"  chmod 0755 {q(pip)}",
        "else",
        f"  out=$({q(py)} -m venv {q(V)} 2>&1) || "
        + fail(f"no pip found for {py} and its ensurepip failed: cannot build the virtualenv (on Debian: "
               "apt-get install python3-venv python3-pip-whl)", then=' "$(printf \'%s\\n\' "$out" | tail -n 1)"'),
        f"  venv_pip() {{ {q(V + '/bin/python')} -m pip \"$@\"; }}",
        "fi",
    ]


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
        *["  " + ln for ln in build_lines(cfg.project.python, V)],
        f"  if ! out=$(venv_pip {pip} 2>&1); then",
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
