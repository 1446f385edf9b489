"""Errors raised while running the embedded backing services."""

from pathlib import Path


class StackError(RuntimeError):
    """A backing service of the embedded stack could not be started or used."""


class ServiceStartError(StackError):
    """A service did not come up; the message names it and quotes its log."""

    def __init__(self, service: str, reason: str, log_path: Path | None = None, log_tail: str = ""):
        self.service = service
        self.log_path = log_path
        message = f"{service} failed to start: {reason}"
        if log_path is not None:
            message += f"\n--- last lines of {log_path} ---\n{log_tail}" if log_tail else f" (log: {log_path}, empty)"
        super().__init__(message)


class DataDirInUseError(StackError):
    """Another process already runs this service on the same data directory."""


class PortsTakenError(ServiceStartError):
    """A restart could not get back the ports its clients are configured with."""
