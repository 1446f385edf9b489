"""Credentials generated once per data directory and reused on every restart."""

import json
import os
import secrets
import string
from pathlib import Path

_ALPHABET = string.ascii_letters + string.digits


def _random_token(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def stack_secret(data_dir: Path, name: str, length: int = 32) -> str:
    """The value of `name` in data_dir/secrets.json, created (mode 0600) on first use."""
    path = data_dir / "secrets.json"
    values = json.loads(path.read_text()) if path.exists() else {}
    if name not in values:
        values[name] = _random_token(length)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(values, handle, indent=2, sort_keys=True)
            handle.write("\n")
    return values[name]
