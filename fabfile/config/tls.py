"""The checks of [tls] (fabdeploy.config.schema builds its keys from them): the certificate/key path syntax
and the cross-key rules, each failure one ConfigError line naming the key."""
from __future__ import annotations

import re

from fabdeploy.errors import ConfigError

HOST_PATH = "host:"  # [tls] certificate/key: a path already on the host, not a local file to upload
_HOST_FILE = re.compile(r"^host:/[A-Za-z0-9._/@+-]*[A-Za-z0-9._@+-]$")
_HOST_ABS = re.compile(r"^/[A-Za-z0-9._/@+-]*[A-Za-z0-9._@+-]$")
# acme: a DNS name an ACME CA validates over HTTP-01 (no wildcard, no regex, no address)
_DNS_NAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def _tls_file(value):
    """[tls] certificate / key: a local path (relative to deploy.toml), or "host:/absolute/path" (plain
    characters: nginx's config has no quoting)."""
    if not isinstance(value, str):
        return "must be a string"
    if value.startswith(HOST_PATH):
        return None if _HOST_FILE.match(value) and "/../" not in value + "/" else \
            "must be \"host:/absolute/path\" of plain characters (letters, digits, . _ / @ + -)"
    if "\n" in value or "\0" in value:
        return "must be a path"
    return None


def _ca_bundle(value):
    """[tls] ca_bundle: "" or an absolute path on the host (plain characters)."""
    if not isinstance(value, str):
        return "must be a string"
    if value and not (_HOST_ABS.match(value) and "/../" not in value + "/"):
        return "must be an absolute path on the host of plain characters (letters, digits, . _ / @ + -)"
    return None


def check_tls(data: dict, where: str) -> None:
    """[tls]: "files" needs certificate and key; "acme" needs plain DNS names; a port other than nginx's;
    the hsts extras need hsts."""
    tls = data["tls"]
    if tls["mode"] == "acme":
        _check_acme(data, where)
    if tls["mode"] == "files":
        for key in ("certificate", "key"):
            if not tls[key]:
                raise ConfigError(f'{where}tls.{key} is required with tls.mode = "files" (a local path, or '
                                  '"host:/path" of a file already on the host)')
        if tls["certificate"].startswith(HOST_PATH) != tls["key"].startswith(HOST_PATH):
            raise ConfigError(f"{where}tls.certificate and tls.key must both be local files or both "
                              '"host:/path" files already on the host')
    _check_hsts(tls, where)
    listen = str(data["nginx"]["listen"])
    if tls["mode"] != "off" and listen.rsplit(":", 1)[-1] == str(tls["port"]):
        raise ConfigError(f"{where}tls.port = {tls['port']} is also nginx.listen: the https port must be another one")


PRELOAD_MIN = 31536000  # hstspreload.org: max-age of at least a year, includeSubDomains, preload


def _check_hsts(tls: dict, where: str) -> None:
    """hsts_include_subdomains / hsts_preload extend a header that is sent (hsts > 0); preload also needs
    includeSubDomains and a year (what the preload list accepts)."""
    for key in ("hsts_include_subdomains", "hsts_preload"):
        if tls[key] and not tls["hsts"]:
            raise ConfigError(f"{where}tls.{key} = true needs tls.hsts > 0 (no Strict-Transport-Security header "
                              "is sent with hsts = 0)")
    if tls["hsts_preload"] and not (tls["hsts_include_subdomains"] and tls["hsts"] >= PRELOAD_MIN):
        raise ConfigError(f"{where}tls.hsts_preload = true needs tls.hsts_include_subdomains = true and tls.hsts >= "
                          f"{PRELOAD_MIN} (what the browsers' preload list accepts)")


def hsts_header(tls) -> str:
    """The Strict-Transport-Security value for a [tls] section (its `hsts*` keys), "" when hsts = 0."""
    if not tls["hsts"]:
        return ""
    return (f"max-age={tls['hsts']}" + ("; includeSubDomains" if tls["hsts_include_subdomains"] else "")
            + ("; preload" if tls["hsts_preload"] else ""))


def _check_acme(data: dict, where: str) -> None:
    """acme: every nginx.server_name a plain DNS name (HTTP-01: no "_", wildcard, regex or address), no
    certificate/key. Several lb hosts: the first issues (front/acme_fleet.py)."""
    tls = data["tls"]
    for key in ("certificate", "key"):
        if tls[key]:
            raise ConfigError(f'{where}tls.{key} is for mode = "files": with mode = "acme" certbot makes them')
    names = str(data["nginx"]["server_name"]).split()
    for n in names:
        if not _DNS_NAME.match(n) or n.replace(".", "").isdigit():
            raise ConfigError(f'{where}nginx.server_name {n!r} cannot have an ACME certificate (tls.mode = "acme" '
                              "needs plain DNS names: no _, wildcard, regex or address)")
    if not names:
        raise ConfigError(f'{where}nginx.server_name is required with tls.mode = "acme" (the certificate\'s names)')
