"""Where the CLI finds the server and the token.

The environment wins (`COMICGEN_URL`, `COMICGEN_TOKEN`: CI jobs and one-off scripts), then the
config file that `comicgen login` writes: `$COMICGEN_CONFIG`, else
`$XDG_CONFIG_HOME/comicgen/config.toml`, else `~/.config/comicgen/config.toml`. The file holds a
secret, so it is written readable by its owner only (mode 600, in a folder of mode 700).
"""

from __future__ import annotations

import json
import os
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8000"


class ConfigError(Exception):
    """The config file exists but cannot be read as TOML."""


@dataclass(frozen=True)
class Settings:
    url: str
    token: str | None
    source: str  # where the token came from, for messages


def config_path() -> Path:
    explicit = os.environ.get("COMICGEN_CONFIG")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "comicgen" / "config.toml"


def read_file(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"Cannot read {path}: {error}") from None
    return {key: value for key, value in data.items() if isinstance(value, str)}


def load() -> Settings:
    path = config_path()
    stored = read_file(path)
    env_token = os.environ.get("COMICGEN_TOKEN", "").strip()
    url = os.environ.get("COMICGEN_URL", "").strip() or stored.get("url") or DEFAULT_URL
    if env_token:
        return Settings(url.rstrip("/"), env_token, "COMICGEN_TOKEN")
    token = stored.get("token") or None
    return Settings(url.rstrip("/"), token, str(path) if token else "")


def save(url: str, token: str, username: str) -> Path:
    """Write the config file, owner-only from its first byte (never world-readable, even for
    an instant)."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # TOML basic strings accept JSON's string escapes.
    text = "".join(
        f"{key} = {json.dumps(value)}\n"
        for key, value in (("url", url), ("username", username), ("token", token))
    )
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        os.fchmod(handle.fileno(), 0o600)  # an existing file keeps its old mode otherwise
        handle.write(text)
    return path


def too_open(path: Path) -> bool:
    """Whether others than the owner may read the file (then the token may have leaked)."""
    try:
        return bool(path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO))
    except OSError:
        return False
