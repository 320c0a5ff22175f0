"""The checks of [tls] (fabdeploy.config.schema builds its keys from them): the certificate/key path syntax
and the cross-key rules, each failure one ConfigError line naming the key."""
from __future__ import annotations

import re

from fabdeploy.errors import ConfigError

HOST_PATH = "host:"  # [tls] certificate/key: a path already on the host, not a local file to upload
_HOST_FILE = re.compile(r"^host:/[A-Za-z0-9._/@+-]*[A-Za-z0-9._@+-]$")


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


def check_tls(data: dict, where: str) -> None:
    """[tls]: "files" needs certificate and key; "acme" is not built yet; a port other than nginx's."""
    tls = data["tls"]
    if tls["mode"] == "acme":
        raise ConfigError(f'{where}tls.mode = "acme" is not yet supported: use mode = "files" (certificate and key)')
    if tls["mode"] == "files":
        for key in ("certificate", "key"):
            if not tls[key]:
                raise ConfigError(f'{where}tls.{key} is required with tls.mode = "files" (a local path, or '
                                  '"host:/path" of a file already on the host)')
        if tls["certificate"].startswith(HOST_PATH) != tls["key"].startswith(HOST_PATH):
            raise ConfigError(f"{where}tls.certificate and tls.key must both be local files or both "
                              '"host:/path" files already on the host')
    listen = str(data["nginx"]["listen"])
    if tls["mode"] != "off" and listen.rsplit(":", 1)[-1] == str(tls["port"]):
        raise ConfigError(f"{where}tls.port = {tls['port']} is also nginx.listen: the https port must be another one")
