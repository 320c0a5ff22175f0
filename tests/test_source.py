"""What gets deployed: fabdeploy.source (git / plain directory archives, release ids, the upload bundle) and
fabdeploy.wheelhouse.venv_hash. Local git repos in temp dirs; no network."""
from __future__ import annotations

import io
import re
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from fabdeploy.config import parse_config
from fabdeploy.errors import LocalError
from fabdeploy.hosts.layout import RELEASE_ID
from fabdeploy.local.source import EXCLUDE_ANYWHERE, EXCLUDE_TOP, Source, _git, bundle, read_source, release_id
from fabdeploy.local.wheelhouse import venv_hash

FILES = {
    "manage.py": "#!/usr/bin/env python\nprint('manage')\n",
    "requirements.txt": "Django>=5.2,<5.3\n",
    "shop/__init__.py": "",
    "shop/settings.py": "DEBUG = True\n",
    "shop/static/shop/site.css": "body {}\n",
}


@pytest.fixture(autouse=True)
def _isolated_git(tmp_path, monkeypatch):
    """No surrounding repository, user config or signing can leak into the temp repos."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", "/dev/null")
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Test")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "test@example.com")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "Test")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "test@example.com")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def write_tree(root: Path, files: dict[str, str]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)


def make_repo(root: Path, files: dict[str, str] = FILES) -> str:
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q", "-b", "main")
    write_tree(root, files)
    (root / "manage.py").chmod(0o755) if (root / "manage.py").exists() else None
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial")
    return git(root, "rev-parse", "HEAD")


def cfg_for(config_dir: Path, pip: dict | None = None, **project):
    data = {"project": {"name": "shop", "django_settings": "shop.settings", "wsgi": "shop.wsgi:application",
                        **project},
            "paths": {"deploy_to": "/srv/shop"}}
    if pip:
        data["pip"] = pip
    return parse_config(data, config_dir / "deploy.toml")


def names(tar_bytes: bytes) -> set[str]:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        return {m.name.rstrip("/") for m in tar.getmembers() if m.type != tarfile.XGLTYPE}


def member(tar_bytes: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        return tar.extractfile(name).read()


# === git ======================================================================================================

def test_git_source_is_the_committed_tree(tmp_path):
    repo = tmp_path / "repo"
    sha = make_repo(repo)
    src = read_source(cfg_for(repo))
    assert src.kind == "git"
    assert src.revision == sha and re.fullmatch(r"[0-9a-f]{40}", sha)
    assert src.short == sha[:7]
    assert src.branch == "main"
    assert src.warnings == []
    assert set(FILES) <= names(src.tar)
    assert not any(n == ".git" or n.startswith(".git/") for n in names(src.tar))
    assert member(src.tar, "shop/settings.py") == b"DEBUG = True\n"
    assert src.requirements == FILES["requirements.txt"].encode()
    with tarfile.open(fileobj=io.BytesIO(src.tar)) as tar:
        assert tar.getmember("manage.py").mode & 0o111  # executable bit kept


def test_git_subdirectory_archives_only_that_subtree(tmp_path):
    repo = tmp_path / "repo"
    files = {f"app/{k}": v for k, v in FILES.items()} | {"README.md": "top\n", "other/secret.txt": "no\n"}
    make_repo(repo, files)
    src = read_source(cfg_for(repo, source="app"))
    assert src.kind == "git"
    assert names(src.tar) >= set(FILES)
    assert not {n for n in names(src.tar) if n.startswith(("app", "other", "README"))}
    assert src.requirements == FILES["requirements.txt"].encode()


def test_uncommitted_changes_warn_and_are_not_deployed(tmp_path):
    repo = tmp_path / "repo"
    sha = make_repo(repo)
    (repo / "shop" / "settings.py").write_text("DEBUG = False  # local edit\n")
    (repo / "untracked.py").write_text("x = 1\n")
    src = read_source(cfg_for(repo))
    assert src.warnings == [f"2 uncommitted change(s) in {repo} are not deployed (deploying HEAD = {sha[:7]})"]
    assert member(src.tar, "shop/settings.py") == b"DEBUG = True\n"
    assert "untracked.py" not in names(src.tar)


def test_changes_outside_the_source_subdirectory_do_not_warn(tmp_path):
    repo = tmp_path / "repo"
    make_repo(repo, {f"app/{k}": v for k, v in FILES.items()} | {"docs/index.md": "a\n"})
    (repo / "docs" / "index.md").write_text("edited\n")
    assert read_source(cfg_for(repo, source="app")).warnings == []
    (repo / "app" / "manage.py").write_text("edited\n")
    assert len(read_source(cfg_for(repo, source="app")).warnings) == 1


def test_revision_branch_and_sha(tmp_path):
    repo = tmp_path / "repo"
    first = make_repo(repo)
    git(repo, "checkout", "-q", "-b", "feature")
    (repo / "feature.py").write_text("f = 1\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "feature")
    feature = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "main")

    by_branch = read_source(cfg_for(repo, revision="feature"))
    assert (by_branch.revision, by_branch.branch) == (feature, "feature")
    assert "feature.py" in names(by_branch.tar)

    by_sha = read_source(cfg_for(repo, revision=first[:10]))
    assert (by_sha.revision, by_sha.branch) == (first, "")
    assert "feature.py" not in names(by_sha.tar)

    git(repo, "checkout", "-q", "--detach", feature)
    detached = read_source(cfg_for(repo))
    assert (detached.revision, detached.branch) == (feature, "")


def test_unknown_revision_is_a_local_error(tmp_path):
    repo = tmp_path / "repo"
    make_repo(repo)
    with pytest.raises(LocalError, match=r"project.revision 'nope' is not a commit in "):
        read_source(cfg_for(repo, revision="nope"))


def test_repo_without_commits_is_a_local_error(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    write_tree(repo, FILES)
    with pytest.raises(LocalError, match="project.revision 'HEAD' is not a commit"):
        read_source(cfg_for(repo))


def test_git_source_without_requirements_is_a_local_error(tmp_path):
    repo = tmp_path / "repo"
    make_repo(repo, {k: v for k, v in FILES.items() if k != "requirements.txt"})
    (repo / "requirements.txt").write_text("uncommitted\n")
    with pytest.raises(LocalError, match=r"requirements.txt not found in HEAD of .* \(project.requirements\)"):
        read_source(cfg_for(repo))


def test_missing_source_dir_is_a_local_error(tmp_path):
    with pytest.raises(LocalError, match="is not a directory"):
        read_source(cfg_for(tmp_path, source="nope"))


def test_git_error_message_is_plain_text(tmp_path):
    repo = tmp_path / "repo"
    make_repo(repo)
    with pytest.raises(LocalError) as info:
        _git(repo, "rev-parse", "--verify", "no-such-ref")
    message = str(info.value)
    assert message.startswith(f"git rev-parse --verify no-such-ref in {repo} failed: fatal:")
    assert "['" not in message


# === plain directory ==========================================================================================

JUNK = {
    ".git/HEAD": "ref: refs/heads/main\n",
    "shop/__pycache__/settings.cpython-311.pyc": "x",
    "shop/stale.pyc": "x",
    "media/upload.jpg": "x",
    "db.sqlite3": "x",
    "deploy.toml": "[project]\n",
    ".venv/bin/python": "x",
    "node_modules/x/index.js": "x",
    ".pytest_cache/v": "x",
}


def test_plain_directory_excludes_junk(tmp_path):
    src_dir = tmp_path / "proj"
    write_tree(src_dir, FILES | JUNK)
    src = read_source(cfg_for(src_dir))
    assert src.kind == "dir" and src.branch == "" and src.warnings == []
    got = names(src.tar)
    assert set(FILES) <= got
    for junk in JUNK:
        top = junk.split("/")[0]
        assert junk not in got and (top in ("shop",) or top not in got), junk
    assert not any(n.endswith(".pyc") or "__pycache__" in n for n in got)
    assert src.requirements == FILES["requirements.txt"].encode()
    assert member(src.tar, "shop/settings.py") == b"DEBUG = True\n"


def test_plain_directory_honours_project_exclude(tmp_path):
    src_dir = tmp_path / "proj"
    write_tree(src_dir, FILES | {"docs/index.md": "x", "logs/a.log": "x", "shop/keys/private.key": "x",
                                 "shop/keys/public.pem": "x", "notes.log": "x"})
    got = names(read_source(cfg_for(src_dir, exclude=["docs", "*.log", "shop/keys/*.key"])).tar)
    assert "docs" not in got and "docs/index.md" not in got
    assert "logs/a.log" not in got and "notes.log" not in got
    assert "shop/keys/private.key" not in got and "shop/keys/public.pem" in got


def test_plain_directory_revision_is_a_content_hash(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_tree(a, FILES)
    write_tree(b, FILES | {"db.sqlite3": "excluded, so no effect"})
    src_a, src_b = read_source(cfg_for(a)), read_source(cfg_for(b))
    assert re.fullmatch(r"[0-9a-f]{64}", src_a.revision)
    assert src_a.short == src_a.revision[:7]
    assert src_a.revision == src_b.revision
    time.sleep(0.01)
    (a / "shop" / "settings.py").write_text("DEBUG = True\n")  # same content, new mtime
    assert read_source(cfg_for(a)).revision == src_a.revision
    (a / "shop" / "settings.py").write_text("DEBUG = False\n")
    assert read_source(cfg_for(a)).revision != src_a.revision


def test_no_requirements_file_reads_as_empty(tmp_path):
    src_dir, repo = tmp_path / "proj", tmp_path / "repo"
    files = {k: v for k, v in FILES.items() if k != "requirements.txt"}
    write_tree(src_dir, files)
    make_repo(repo, files)
    for where in (src_dir, repo):
        assert read_source(cfg_for(where, pip={"packages": ["Django"]}, requirements="")).requirements == b""


def test_plain_directory_without_requirements_is_a_local_error(tmp_path):
    src_dir = tmp_path / "proj"
    write_tree(src_dir, {"manage.py": "x"})
    with pytest.raises(LocalError, match=r"requirements.txt not found \(project.requirements\)"):
        read_source(cfg_for(src_dir))


def test_plain_directory_keeps_symlinks_as_links(tmp_path):
    src_dir = tmp_path / "proj"
    write_tree(src_dir, FILES)
    (src_dir / "current_settings.py").symlink_to("shop/settings.py")
    with tarfile.open(fileobj=io.BytesIO(read_source(cfg_for(src_dir)).tar)) as tar:
        link = tar.getmember("current_settings.py")
        assert link.issym() and link.linkname == "shop/settings.py"


def test_plain_directory_keeps_nested_dirs_named_like_top_level_junk(tmp_path):
    src_dir = tmp_path / "proj"
    write_tree(src_dir, FILES | {"shop/static/shop/media/logo.png": "png", "media/upload.jpg": "x"})
    got = names(read_source(cfg_for(src_dir)).tar)
    assert "media/upload.jpg" not in got
    assert "shop/static/shop/media/logo.png" in got


def test_default_excludes_cover_the_documented_names():
    for name in (".git", "__pycache__", "*.pyc", "media", "db.sqlite3", "deploy.toml"):
        assert name in EXCLUDE_ANYWHERE + EXCLUDE_TOP


# === release id ===============================================================================================

def _src(short="abcdef0") -> Source:
    return Source("git", short + "0" * 33, "main", short, b"", b"", [])


def test_release_id_format():
    assert release_id(_src(), now=1767225600) == "20260101T000000Z-abcdef0"
    assert release_id(_src(), now=1767225600 + 3600 * 13 + 61) == "20260101T130101Z-abcdef0"
    assert RELEASE_ID.match(release_id(_src(), now=1767225600))


def test_release_id_defaults_to_now_in_utc():
    before = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    rid = release_id(_src())
    after = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    assert RELEASE_ID.match(rid)
    assert before <= rid.split("-")[0] <= after


def test_release_ids_sort_by_time():
    ids = [release_id(_src(s), now=t) for s, t in (("fffffff", 1000), ("0000000", 2000), ("aaaaaaa", 3000))]
    assert sorted(ids) == ids


# === bundle ===================================================================================================

def _project_tar(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            data = content.encode()
            info.size = len(data)
            info.mode = 0o755 if name == "manage.py" else 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_bundle_puts_the_project_under_release(tmp_path):
    out = bundle(_project_tar(FILES), [])
    assert out[:2] == b"\x1f\x8b"  # gzip
    with tarfile.open(fileobj=io.BytesIO(out), mode="r:gz") as tar:
        members = tar.getmembers()
        assert members[0].name == "release" and members[0].isdir()
        assert {m.name for m in members} == {"release"} | {f"release/{n}" for n in FILES}
        assert tar.extractfile("release/shop/settings.py").read() == b"DEBUG = True\n"
        assert tar.getmember("release/manage.py").mode == 0o755


def test_bundle_puts_wheels_under_wheels(tmp_path):
    wheels = []
    for name in ("Django-5.2-py3-none-any.whl", "uWSGI-2.0.28-cp311-cp311-linux_x86_64.whl"):
        path = tmp_path / name
        path.write_bytes(b"PK fake wheel " + name.encode())
        wheels.append(path)
    with tarfile.open(fileobj=io.BytesIO(bundle(_project_tar(FILES), wheels)), mode="r:gz") as tar:
        got = {m.name for m in tar.getmembers()}
        assert "wheels" in got and tar.getmember("wheels").isdir()
        assert {n for n in got if n.startswith("wheels/")} == {f"wheels/{w.name}" for w in wheels}
        assert tar.extractfile(f"wheels/{wheels[0].name}").read() == wheels[0].read_bytes()


def test_bundle_of_a_git_archive_drops_the_pax_header_and_extracts_with_tar(tmp_path):
    repo = tmp_path / "repo"
    make_repo(repo)
    src = read_source(cfg_for(repo))
    with tarfile.open(fileobj=io.BytesIO(src.tar)) as tar:
        assert tar.pax_headers.get("comment") == src.revision  # git archive's global header
    out = bundle(src.tar, [])
    dest = tmp_path / "extract"
    dest.mkdir()
    subprocess.run(["tar", "-xzf", "-", "-C", str(dest)], input=out, check=True)
    assert sorted(p.name for p in dest.iterdir()) == ["release"]
    for name, content in FILES.items():
        assert (dest / "release" / name).read_text() == content
    assert not (dest / "pax_global_header").exists()


def test_bundle_keeps_top_level_dotfiles(tmp_path):
    files = FILES | {".well-known/security.txt": "Contact: x\n", ".env.example": "A=1\n"}
    got = names(bundle(_project_tar(files), []))
    assert "release/.well-known/security.txt" in got
    assert "release/.env.example" in got


# === venv_hash ================================================================================================

def _vcfg(**sections):
    data = {"project": {"name": "shop", "django_settings": "shop.settings", "wsgi": "shop.wsgi:application"},
            "paths": {"deploy_to": "/srv/shop"}}
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return parse_config(data)


REQ = b"Django>=5.2,<5.3\n"


def test_venv_hash_is_stable_and_short():
    h = venv_hash(_vcfg(), REQ, "3.11.2")
    assert re.fullmatch(r"[0-9a-f]{16}", h)
    assert venv_hash(_vcfg(), REQ, "3.11.2") == h
    assert venv_hash(_vcfg(ssh={"connect_timeout": 30}, uwsgi={"processes": 9}), REQ, "3.11.2") == h


@pytest.mark.parametrize("change", [
    {"requirements": b"Django>=5.2,<5.3\nrequests\n"},
    {"python_version": "3.11.3"},
    {"python_version": "3.12.2"},
    {"cfg": {"uwsgi": {"package": "uwsgi==2.0.28"}}},
    {"cfg": {"project": {"python": "python3.12"}}},
    {"cfg": {"pip": {"index_url": "https://mirror.example/simple"}}},
    {"cfg": {"pip": {"wheelhouse": True}}},
    {"cfg": {"pip": {"packages": ["whitenoise"]}}},
], ids=["requirements", "patch-version", "minor-version", "uwsgi-package", "interpreter", "index", "wheelhouse",
        "packages"])
def test_venv_hash_changes_with_what_goes_into_the_venv(change):
    base = venv_hash(_vcfg(), REQ, "3.11.2")
    changed = venv_hash(_vcfg(**change.get("cfg", {})), change.get("requirements", REQ),
                        change.get("python_version", "3.11.2"))
    assert changed != base


def test_venv_hash_parts_cannot_be_shifted_into_each_other():
    # requirements "a" + python "b" must not hash like requirements "ab" + python ""
    assert venv_hash(_vcfg(), b"a", "b") != venv_hash(_vcfg(), b"ab", "")
