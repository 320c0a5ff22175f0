"""The system of a host, from /etc/os-release (ID, ID_LIKE, VERSION_ID, PRETTY_NAME): which family of
package tool provisioning uses, or one line naming an unsupported system."""
from __future__ import annotations

from dataclasses import dataclass

from fabdeploy.errors import FabdeployError

SUPPORTED = ("Debian 12/13, Ubuntu 22.04/24.04, RHEL/CentOS Stream/Rocky/Alma 8-9, Fedora, CentOS 7")
_RHEL_LIKE = {"rhel", "centos", "rocky", "almalinux", "ol"}


class UnsupportedSystem(FabdeployError):
    """The host's system is not one provision knows: nothing was changed."""


@dataclass(frozen=True)
class System:
    id: str
    version: str  # VERSION_ID: "12", "24.04", "9.3"
    pretty: str
    family: str  # "apt" | "dnf" | "yum"
    major: int

    @property
    def rhel(self) -> bool:
        """RHEL and its rebuilds (not Fedora): python3.11 from AppStream on 8/9."""
        return self.family in ("dnf", "yum") and self.id != "fedora"


def parse_os_release(text: str) -> dict[str, str]:
    """KEY=value lines of an os-release file (values unquoted) as a dict."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if not sep or key.startswith("#"):
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        out[key] = value
    return out


def detect(fields: dict[str, str], host: str = "") -> System:
    """The System of these os-release fields; UnsupportedSystem naming PRETTY_NAME otherwise."""
    os_id = fields.get("ID", "").lower()
    like = set(fields.get("ID_LIKE", "").lower().split())
    version = fields.get("VERSION_ID", "")
    pretty = fields.get("PRETTY_NAME") or f"{os_id} {version}".strip() or "an unknown system"
    try:
        major = int(version.split(".")[0])
    except ValueError:
        major = 0
    family = ""
    if os_id == "debian" and major in (12, 13):
        family = "apt"
    elif os_id == "ubuntu" and version in ("22.04", "24.04"):
        family = "apt"
    elif os_id == "fedora":
        family = "dnf"
    elif os_id == "centos" and major == 7:
        family = "yum"
    elif (os_id in _RHEL_LIKE or like & _RHEL_LIKE) and major in (8, 9):
        family = "dnf"
    if not family:
        where = f"{host}: " if host else ""
        raise UnsupportedSystem(f"{where}unsupported system {pretty} (provision knows {SUPPORTED}); "
                                "nothing was changed")
    return System(os_id, version, pretty, family, major)
