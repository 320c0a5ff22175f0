"""Requirement files with -r/-c includes (fabdeploy.requirements, Source.requirement_files), the venv and wheel
keys over all of them, the exact-interpreter check of the wheelhouse and the venv phase's message for a
requirement pip cannot find. Local git repos, real sh and real pip in temp dirs; no network."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fabdeploy import model

from fabdeploy.steps import setup

from fabdeploy.steps import venv
from fabdeploy.config import parse_config
from fabdeploy.errors import LocalError
from fabdeploy.hosts.layout import Layout
from fabdeploy.local.requirements import collect, hash_input, include_of, listed, logical_lines
from fabdeploy.remote.markers import MARK
from fabdeploy.remote.script import Script
from fabdeploy.local.source import read_source
from fabdeploy.local.wheelhouse import build_wheels, local_python_facts, venv_hash, wheel_key

NESTED = {
    "manage.py": "print('manage')\n",
    "requirements.txt": "# top\n-r requirements/production.txt\n",
    "requirements/production.txt": "--requirement=base.txt\n-c ../constraints.txt\ngunicorn ; python_version >= '3'\n",
    "requirements/base.txt": "Django>=5.2,<5.3\n-rextra.txt\n",
    "requirements/extra.txt": "--constraint ../constraints.txt\nsqlparse\n",
    "constraints.txt": "Django==5.2.19\n",
}


from test_source import _isolated_git  # noqa: E402,F401  (autouse: temp repos see no outer git config)


def write_tree(root: Path, files: dict[str, str]) -> None:
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)


def make_repo(root: Path, files: dict[str, str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    write_tree(root, files)
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "x"]):
        subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


def cfg_for(src: Path, pip: dict | None = None, **project):
    data = {"project": {"name": "shop", "django_settings": "shop.settings", "wsgi": "shop.wsgi:application",
                        **project},
            "paths": {"deploy_to": "/srv/shop"}}
    if pip:
        data["pip"] = pip
    return parse_config(data, src / "deploy.toml")


# === parsing ==================================================================================================

@pytest.mark.parametrize("line,expected", [
    ("-r base.txt", ("-r", "base.txt")),
    ("-rbase.txt", ("-r", "base.txt")),
    ("--requirement base.txt", ("-r", "base.txt")),
    ("--requirement=base.txt", ("-r", "base.txt")),
    ("-c c.txt", ("-c", "c.txt")),
    ("--constraint=c.txt", ("-c", "c.txt")),
    ("--constraint   'dir with space/c.txt'", ("-c", "dir with space/c.txt")),
    ("Django>=5.2", None),
    ("-e .", None),
    ("--requirements-typo x", None),
])
def test_include_forms(line, expected):
    assert include_of(line) == expected


def test_logical_lines_join_continuations_and_drop_comments():
    text = "# only a comment\nDjango>=5.2 \\\n  ,<5.3  # pinned\n\n-r base.txt#not-a-comment\nurl#frag\n"
    assert logical_lines(text) == ["Django>=5.2   ,<5.3", "-r base.txt#not-a-comment", "url#frag"]


# === collecting the files =====================================================================================

def test_git_source_reads_every_included_file_relative_to_its_includer(tmp_path):
    make_repo(tmp_path / "repo", NESTED)
    src = read_source(cfg_for(tmp_path / "repo"))
    assert list(src.requirement_files) == ["requirements.txt", "requirements/production.txt",
                                           "requirements/base.txt", "constraints.txt", "requirements/extra.txt"]
    assert src.requirement_files["requirements/extra.txt"] == NESTED["requirements/extra.txt"].encode()
    assert src.requirements == hash_input(src.requirement_files)


def test_plain_directory_reads_the_includes_from_the_archive(tmp_path):
    write_tree(tmp_path / "dir", NESTED)
    src = read_source(cfg_for(tmp_path / "dir"))
    assert src.kind == "dir" and set(src.requirement_files) == {p for p in NESTED if p != "manage.py"}


def test_an_include_excluded_from_the_upload_is_a_local_error(tmp_path):
    write_tree(tmp_path / "dir", NESTED)
    with pytest.raises(LocalError, match=r"^requirements/base.txt: -r extra.txt: requirements/extra.txt not found "
                                         r"in .*project.exclude"):
        read_source(cfg_for(tmp_path / "dir", exclude=["extra.txt"]))


def test_an_uncommitted_include_is_a_local_error_naming_the_includer(tmp_path):
    files = {k: v for k, v in NESTED.items() if k != "requirements/base.txt"}
    make_repo(tmp_path / "repo", files)
    (tmp_path / "repo" / "requirements" / "base.txt").write_text("uncommitted\n")
    with pytest.raises(LocalError, match=r"^requirements/production.txt: -r base.txt: requirements/base.txt not "
                                         r"found in HEAD of "):
        read_source(cfg_for(tmp_path / "repo"))


@pytest.mark.parametrize("line,message", [
    ("-r ../../outside.txt", r"^req.txt: -r ../../outside.txt leaves the source tree"),
    ("-c /etc/constraints.txt", r"^req.txt: -c /etc/constraints.txt leaves the source tree"),
    ("-r https://example.com/r.txt", r"^req.txt: -r https://example.com/r.txt is a URL"),
    ("--constraint=file:///c.txt", r"^req.txt: -c file:///c.txt is a URL"),
    ("-r", r"^req.txt: -r without a file name"),
    ("--constraint", r"^req.txt: -c without a file name"),
])
def test_includes_that_would_not_be_deployed_are_refused(line, message):
    files = {"req.txt": f"Django\n{line}\n".encode()}
    with pytest.raises(LocalError, match=message):
        collect("req.txt", files.get, "the source")


def test_include_cycles_and_repeats_are_read_once():
    files = {"a.txt": b"-r b.txt\n-c c.txt\n", "b.txt": b"-r a.txt\n-c ./c.txt\n", "c.txt": b"x==1\n"}
    assert list(collect("a.txt", files.get, "src")) == ["a.txt", "b.txt", "c.txt"]


def test_hash_input_of_a_single_file_is_that_file():
    # a project without includes keeps its virtualenv key across this change
    assert hash_input({"requirements.txt": b"Django\n"}) == b"Django\n"
    assert hash_input({}) == b""


def test_a_change_in_any_included_file_changes_the_venv_key(tmp_path):
    cfg = cfg_for(tmp_path)
    files = {k: v.encode() for k, v in NESTED.items() if k.endswith(".txt")}
    base = venv_hash(cfg, hash_input(files), "3.11.2")
    for path in files:
        if path == "requirements.txt":
            continue
        changed = dict(files, **{path: files[path] + b"asgiref\n"})
        assert venv_hash(cfg, hash_input(changed), "3.11.2") != base, path
    moved = {("requirements/other.txt" if k == "requirements/extra.txt" else k): v for k, v in files.items()}
    assert venv_hash(cfg, hash_input(moved), "3.11.2") != base


def test_listed_names_file_line_and_marker():
    files = {"r.txt": b"-c c.txt\nDjango_Foo.Bar>=1 ; python_full_version < \"3.11.3\"\n",
             "c.txt": b"django-foo-bar==1\nplain\n"}
    assert listed(files) == {
        "django-foo-bar": ("r.txt", 'Django_Foo.Bar>=1 ; python_full_version < "3.11.3"',
                           'python_full_version < "3.11.3"'),
        "plain": ("c.txt", "plain", "")}


# === the wheel key and the exact interpreter ==================================================================

def test_wheel_key_covers_host_platform_builder_and_every_file(tmp_path):
    cfg = cfg_for(tmp_path)
    files = {"requirements.txt": b"-r base.txt\n", "base.txt": b"Django\n"}
    host, builder = ("3.11.2", "cpython linux-x86_64 glibc-2.36"), ("/usr/bin/python3.11", "3.11.2",
                                                                    "cpython linux-x86_64 glibc-2.36")
    key = wheel_key(cfg, "v" * 16, files, host, builder)
    assert wheel_key(cfg, "v" * 16, dict(files), host, builder) == key
    assert wheel_key(cfg, "w" * 16, files, host, builder) != key
    assert wheel_key(cfg, "v" * 16, {**files, "base.txt": b"Django\nx\n"}, host, builder) != key
    assert wheel_key(cfg, "v" * 16, files, ("3.11.2", "cpython linux-aarch64 glibc-2.36"), builder) != key
    assert wheel_key(cfg, "v" * 16, files, host, ("/opt/py/bin/python3.11", *builder[1:])) != key


def _fake_version_python(tmp_path: Path, version: str) -> Path:
    """A real interpreter that reports another micro version for the facts script."""
    py = tmp_path / "py"
    py.write_text(f'#!/bin/sh\nif [ "$1" = "-c" ]; then {sys.executable} "$@" | sed "1s/.*/{version}/"; exit; fi\n'
                  f'exec {sys.executable} "$@"\n')
    py.chmod(0o755)
    return py


def test_a_builder_of_another_full_version_is_refused_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    py = _fake_version_python(tmp_path, "3.11.9")
    cfg = cfg_for(tmp_path, pip={"wheelhouse": True, "wheel_python": str(py)})
    _, _, platform = local_python_facts(cfg)
    with pytest.raises(LocalError) as exc:
        build_wheels(cfg, {"requirements.txt": b"Django\n"}, "3.11.2", platform, "v" * 16)
    msg = str(exc.value)
    assert "\n" not in msg and "Python 3.11.2" in msg and f"{py} is Python 3.11.9" in msg
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.whl"))


def test_a_builder_of_another_platform_is_refused(tmp_path):
    cfg = cfg_for(tmp_path, pip={"wheelhouse": True})
    _, version, _ = local_python_facts(cfg)
    with pytest.raises(LocalError, match=r"host runs Python .* \(cpython linux-s390x glibc-2.17\) but "):
        build_wheels(cfg, {}, version, "cpython linux-s390x glibc-2.17", "v" * 16)


def test_setup_reports_python_version_and_platform_like_the_builder(tmp_path):
    from test_phases import sh  # the real-sh runner of the phase tests
    cfg = cfg_for(tmp_path, python=sys.executable)
    from fabdeploy.hosts.layout import Layout
    used = setup.python_facts_lines(cfg.project.python, f"{Layout(cfg.paths.deploy_to).config}/python-facts")
    assert all(ln in setup.setup(cfg).lines for ln in used)
    lines = setup.python_facts_lines(cfg.project.python, str(tmp_path / "python-facts"))
    proc = sh("\n".join(lines + ['echo "$python_version|$python_platform"']), tmp_path)
    _, version, platform = local_python_facts(cfg_for(tmp_path, pip={"wheel_python": sys.executable}))
    assert proc.stdout.decode().strip().splitlines()[-1] == f"{version}|{platform}"


# === a requirement pip cannot find ============================================================================

def test_venv_names_the_missing_requirement_and_its_marker_with_real_pip(tmp_path):
    """Real python -m venv and pip, offline, against a wheelhouse that has only the app server."""
    from test_phases import sh
    deploy_to = tmp_path / "app"
    cfg = parse_config({"project": {"name": "shop", "django_settings": "s.settings", "wsgi": "s.wsgi:application",
                                    "python": "/usr/bin/python3"},
                        "paths": {"deploy_to": str(deploy_to)}})
    rel = model.Release("20260101T000000Z-abcdef0", "a" * 40, "main", "git", "", "", "0123456789abcdef", True)
    lay = Layout(str(deploy_to))
    files = {"requirements.txt": b"-r requirements/base.txt\n",
             "requirements/base.txt": b'fabdeploy-absent-pkg==1.0 ; python_full_version >= "3.0"\n'}
    for path, data in files.items():
        (Path(lay.release(rel.id)) / path).parent.mkdir(parents=True, exist_ok=True)
        (Path(lay.release(rel.id)) / path).write_bytes(data)
    Path(lay.staging(rel.id), "wheels").mkdir(parents=True)
    uwsgi = next((Path(__file__).parent.parent / ".cache" / "wheels").glob("uwsgi-*.whl"))  # (scripts/setup)
    Path(lay.staging(rel.id), "wheels", uwsgi.name).write_bytes(uwsgi.read_bytes())
    Path(lay.venvs).mkdir(parents=True)
    proc = sh(Script([venv.venv(cfg, rel, files)]), tmp_path, env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": ""},
              timeout=300)
    assert proc.returncode == 1
    errors = [ln for ln in proc.stderr.decode().splitlines() if ln.startswith(f"{MARK} error ")]
    assert errors == [f"{MARK} error pip found no distribution of fabdeploy-absent-pkg in the uploaded wheelhouse: "
                      "requirements/base.txt requires it with the marker 'python_full_version >= \"3.0\"', which "
                      "excluded it when the wheelhouse was built"], proc.stderr.decode()
    assert not Path(lay.staging(rel.id), "wheels").exists()  # the uploaded wheels are gone
