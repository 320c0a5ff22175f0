"""Load and validate deploy.toml.

Every key lives in SCHEMA with its type, default and check; deploy.example.toml documents the same keys.
Validation happens before any SSH connection and fails with one line naming the key.

This package: `schema` (SCHEMA, Key, PHASES: every key with its default and check), `checks` (the value
checks SCHEMA is built from, and the cross-key checks of [roles]), and here the loading and the validated
Config. Every name other modules use is imported from `fabdeploy.config`.
"""
from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from fabdeploy.config.checks import (RESERVED_ENV, SERVER_KEYS, _check_roles, _suggest, check_app, check_cache,
                                     check_database,
                                     check_rolling, host_name)
from fabdeploy.config.schema import _NAME, BALANCE_METHODS, PHASES, SCHEMA, Key, all_sections
from fabdeploy.config.secrets import check_secrets, secret_looking_env
from fabdeploy.config.tls import check_tls
from fabdeploy.errors import ConfigError

__all__ = ["BALANCE_METHODS", "CONFIG_ENV", "DEFAULT_CONFIG", "MIN_SECRET_LEN", "NEVER_SECRET", "PHASES",
           "RESERVED_ENV", "SCHEMA", "all_sections", "SERVER_KEYS", "Config", "Key", "_NAME", "check_rolling", "find_config_path",
           "host_name", "ident", "load_config", "parse_config", "url_userinfo"]

CONFIG_ENV = "FABDEPLOY_CONFIG"
DEFAULT_CONFIG = "deploy.toml"
MIN_SECRET_LEN = 4  # [django] env values this long or longer are masked in everything printed ...
NEVER_SECRET = ("true", "false", "none", "null")  # ... except these words (masking them hides unrelated text)


def url_userinfo(url: str) -> str:
    """The "user:password" (or token) part of scheme://userinfo@host/..., or ""."""
    m = re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://([^/@]+)@", url or "")
    return m.group(1) if m else ""

class Config:
    """Validated configuration: cfg.section.key, plus resolved local paths."""

    def __init__(self, data: dict[str, dict[str, Any]], path: Path | None):
        self.path = path
        self.data = data
        base = path.parent if path else Path.cwd()
        self.source_dir = (base / data["project"]["source"]).resolve()
        # [secrets] resolved on the deploying machine (fabdeploy.local.secrets.resolve): NAME -> value
        self.secret_env: dict[str, str] = {}
        self.warnings: list[str] = secret_looking_env(data["django"]["env"])  # printed once by the task
        self.tls_pair = None  # [tls] files given locally: fabdeploy.local.tls.LocalPair (read and checked)

    def __getattr__(self, section: str) -> "_Section":
        try:
            return _Section(self.__dict__["data"][section])
        except KeyError:
            raise AttributeError(section) from None

    @property
    def nginx_template(self) -> Path | None:
        """The user's nginx site template (relative to the config file), or None for the built-in one."""
        if not self.nginx.template:
            return None
        return ((self.path.parent if self.path else Path.cwd()) / self.nginx.template).resolve()

    @property
    def shared(self) -> str:
        return self.paths.deploy_to.rstrip("/") + "/shared"

    @property
    def server_names(self) -> list[str]:
        return self.nginx.server_name.split()

    @property
    def allowed_hosts(self) -> list[str]:
        if self.django.allowed_hosts:
            return list(self.django.allowed_hosts)
        names = []
        for n in self.server_names:
            if n in ("_", "") or n.startswith("~"):
                continue
            if n.startswith("*."):
                n = n[1:]
            if "*" not in n:
                names.append(n)
        return names or ["localhost"]

    def secret_values(self) -> list[str]:
        """Values to mask in anything printed: every [django] env value of MIN_SECRET_LEN characters or more
        (whatever its name; shorter ones such as "1" or "on", and true/false/none/null, would mask unrelated
        text), the resolved [secrets] (same rule), and the userinfo (user:password, and the password alone)
        of pip.index_url."""
        values = [v for v in [*self.django.env.values(), *self.secret_env.values()]
                  if len(v) >= MIN_SECRET_LEN and v.lower() not in NEVER_SECRET]
        if self.tls_pair is not None:  # (the private key, as the script that installs it carries it)
            values.append(self.tls_pair.key.strip())
        userinfo = url_userinfo(self.pip.index_url)
        if userinfo:
            values.append(userinfo)
            password = userinfo.partition(":")[2]
            values += [p for p in (password, unquote(password)) if len(p) >= MIN_SECRET_LEN]
        return values


class _Section:
    def __init__(self, values: dict[str, Any]):
        self.__dict__.update(values)


def find_config_path(explicit: str | None = None) -> Path:
    """The config file: the task option, else $FABDEPLOY_CONFIG, else ./deploy.toml."""
    name = explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG
    path = Path(name).expanduser()
    if not path.is_file():
        how = "--config" if explicit else (CONFIG_ENV if os.environ.get(CONFIG_ENV) else "default")
        raise ConfigError(f"config file {name} not found ({how}); write one with `fabdeploy init` "
                          "(or `fabdeploy example-config`: the deploy.example.toml reference)")
    return path


def load_config(explicit: str | None = None) -> Config:
    path = find_config_path(explicit)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_config(raw, path)


def ident(name: str) -> str:
    """An nft/nginx identifier for a project name, one-to-one ("my-app" and "my.app" stay distinct):
    letters and digits kept, "_" -> "__", "-" -> "_h", "." -> "_d"."""
    return "".join(c if c.isalnum() else {"_": "__", "-": "_h", ".": "_d"}[c] for c in name)


def parse_config(raw: dict[str, Any], path: Path | None = None) -> Config:
    where = f"{path}: " if path else ""
    schema = all_sections()
    data: dict[str, dict[str, Any]] = {}
    for section, value in raw.items():
        if section not in schema and section != "secrets":
            raise ConfigError(f"{where}unknown section [{section}]{_suggest(section, schema)}")
        if not isinstance(value, dict):
            raise ConfigError(f"{where}{section} must be a table [{section}]")
    for section, keys in schema.items():
        given = raw.get(section, {})
        for key in given:
            if key not in keys:
                shown = key if key.isprintable() else repr(key)
                raise ConfigError(f"{where}unknown key {section}.{shown}{_suggest(key, keys)}")
        values = {}
        for key, spec in keys.items():
            if key not in given:
                if spec.required:
                    raise ConfigError(f"{where}missing required key {section}.{key}")
                values[key] = spec.default if not isinstance(spec.default, (list, dict)) else type(spec.default)(
                    spec.default)
                continue
            problem = spec.check(given[key])
            if problem:
                got = "" if (section, key) == ("django", "env") or section == "roles" else f" (got {given[key]!r})"
                raise ConfigError(f"{where}{section}.{key} {problem}{got}")
            values[key] = given[key]
        data[section] = values
    problem = check_secrets(raw.get("secrets", {}), data["django"]["env"])
    if problem:
        raise ConfigError(f"{where}{problem}")
    data["secrets"] = dict(raw.get("secrets", {}))  # NAME -> its source (checked); values: local.secrets
    deploy_to = data["paths"]["deploy_to"]
    if deploy_to.rstrip("/") in ("", "/") or "//" in deploy_to.rstrip("/") or "/../" in deploy_to + "/" \
            or "/./" in deploy_to + "/":
        raise ConfigError(f"{where}paths.deploy_to must be a real directory below / (got {deploy_to!r})")
    if not data["project"]["requirements"] and not data["pip"]["packages"]:
        raise ConfigError(f"{where}project.requirements is empty and pip.packages lists nothing to install")
    data["paths"]["deploy_to"] = deploy_to.rstrip("/")
    for rel in data["paths"]["shared_dirs"] + [data["project"]["requirements"], data["project"]["manage"]]:
        if ".." in rel.split("/"):
            raise ConfigError(f"{where}path {rel!r} must stay inside its directory (no '..')")
    _check_roles(data, where)
    check_app(data, where)
    check_tls(data, where)
    check_database(data, where)
    check_cache(data, where)
    from fabdeploy.database.fleet import check as check_db_role
    check_db_role(data, where)
    from fabdeploy.appserver import SERVERS
    from fabdeploy.manager import MANAGERS
    refused = MANAGERS[data["app"]["manager"]].refuse(SERVERS[data["app"]["server"]])
    if refused:
        raise ConfigError(f"{where}app.manager {refused}")
    cfg = Config(data, path)
    if cfg.nginx_template and not cfg.nginx_template.is_file():
        raise ConfigError(f"{where}nginx.template {cfg.nginx_template} does not exist")
    tls = data["tls"]
    if tls["mode"] == "files" and not tls["certificate"].startswith("host:"):
        from fabdeploy.local.tls import load_pair
        cfg.tls_pair = load_pair(path.parent if path else Path.cwd(), tls["certificate"], tls["key"], where)
    return cfg
