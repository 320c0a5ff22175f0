"""deploy.example.toml is the config reference: it must parse, list every key fabdeploy knows, and ship in the
package (`fabdeploy example-config`), as the one copy in templates/."""
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile

from fabdeploy.config import all_sections, parse_config
from conftest import BIN, REPO

EXAMPLE = REPO / "templates" / "deploy.example.toml"


def test_example_config_parses_and_documents_every_key():
    raw = tomllib.loads(EXAMPLE.read_text())
    cfg = parse_config(raw)
    assert cfg.project.name == "mysite" and cfg.paths.deploy_to == "/srv/mysite"
    for section, keys in all_sections().items():
        assert section in raw, f"[{section}] missing from deploy.example.toml"
        for key in keys:
            assert key in raw[section], f"{section}.{key} missing from deploy.example.toml"


def test_every_example_key_has_a_comment():
    text = EXAMPLE.read_text()
    section = None
    for line in text.splitlines():
        m = re.match(r"^\[(\w+)\]", line)
        if m:
            section = m.group(1)
            continue
        m = re.match(r"^(\w+) = ", line)
        if m and section != "hooks":  # hooks are documented together above their list
            assert "#" in line, f"{section}.{m.group(1)} has no comment"


def test_fabdeploy_example_config_prints_the_reference(tmp_path):
    res = subprocess.run([str(BIN / "fabdeploy"), "example-config"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout == EXAMPLE.read_text()
    assert not (REPO / "deploy.example.toml").exists()  # one copy only


def test_the_built_wheel_ships_the_reference(tmp_path):
    """What `pip install fabdeploy` gets: a wheel built from this checkout holds the same file."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("fabfile", "templates"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                          "--no-index", "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    (wheel,) = (tmp_path / "dist").glob("fabdeploy-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        assert zf.read("fabdeploy/templates/deploy.example.toml").decode() == EXAMPLE.read_text()
        shipped = set(zf.namelist())
    modules = ["fabdeploy/" + p.relative_to(REPO / "fabfile").as_posix() for p in (REPO / "fabfile").rglob("*.py")]
    assert [m for m in modules if m not in shipped] == []  # every package is listed in pyproject.toml
