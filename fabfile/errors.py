"""Errors fabdeploy reports as one clear line (never a traceback)."""


class FabdeployError(Exception):
    """Base class: str(error) is the whole message shown to the user."""


class ConfigError(FabdeployError):
    """deploy.toml is missing, unreadable or invalid; raised before any SSH connection."""


class LocalError(FabdeployError):
    """Work on the deploying machine failed (git, building wheels, ...)."""


class RemoteError(FabdeployError):
    """A remote phase failed; names the host, the phase and the remote stderr tail."""

    def __init__(self, host: str, phase: str, message: str, tail: str = ""):
        self.host, self.phase, self.tail = host, phase, tail
        text = f"{host}: {phase} failed: {message}"
        if tail:
            text += "\n" + "\n".join("    " + line for line in tail.splitlines())
        super().__init__(text)
