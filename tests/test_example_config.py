"""deploy.example.toml is the config reference: it must parse, and list every key fabdeploy knows."""
import re
import tomllib

from fabdeploy.config import SCHEMA, parse_config
from conftest import REPO


def test_example_config_parses_and_documents_every_key():
    raw = tomllib.loads((REPO / "deploy.example.toml").read_text())
    cfg = parse_config(raw)
    assert cfg.project.name == "mysite" and cfg.paths.deploy_to == "/srv/mysite"
    for section, keys in SCHEMA.items():
        assert section in raw, f"[{section}] missing from deploy.example.toml"
        for key in keys:
            assert key in raw[section], f"{section}.{key} missing from deploy.example.toml"


def test_every_example_key_has_a_comment():
    text = (REPO / "deploy.example.toml").read_text()
    section = None
    for line in text.splitlines():
        m = re.match(r"^\[(\w+)\]", line)
        if m:
            section = m.group(1)
            continue
        m = re.match(r"^(\w+) = ", line)
        if m and section != "hooks":  # hooks are documented together above their list
            assert "#" in line, f"{section}.{m.group(1)} has no comment"
