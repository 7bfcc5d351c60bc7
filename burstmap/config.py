"""Configuration: a YAML file, then environment variables, then keyword arguments, parsed once.

The file is ``$BURSTMAP_CONFIG`` or ``config.yaml`` in the per-user config directory::

    backend: {name: local, workers: 4}     # or just: backend: local
    storage: {name: local, path: /data/burstmap}
    prefix: burstmap
    timeout: 600
    worker_retries: 2                       # re-runs of a call whose worker died
    outage_limit: 60                        # seconds the client waits out an unreachable store
    progress: auto
    secret_key: ...                         # else generated into the per-user config dir

Environment variables override it: ``BURSTMAP_BACKEND``, ``BURSTMAP_STORAGE``, ``BURSTMAP_PREFIX``,
``BURSTMAP_TIMEOUT``, ``BURSTMAP_WORKER_RETRIES``, ``BURSTMAP_OUTAGE_LIMIT``, ``BURSTMAP_PROGRESS``,
``BURSTMAP_SECRET_KEY``, and ``BURSTMAP_BACKEND_<OPTION>`` / ``BURSTMAP_STORAGE_<OPTION>`` for one option
of the backend or store.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs
import yaml

from .errors import ConfigError
from .redact import redact

__all__ = ["Config", "Component", "load_config", "config_path", "secret_key_path"]

_ENV_PREFIX = "BURSTMAP_"
_NOT_SETTINGS = {"CONFIG"}


@dataclass(frozen=True)
class Component:
    """A backend or store: its registered name and the keyword arguments its class takes."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, value: Any, what: str) -> Component:
        """Read ``local`` or ``{name: local, option: value, ...}``."""
        if isinstance(value, Component):
            return value
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, Mapping) and isinstance(value.get("name"), str):
            return cls(value["name"], {k: v for k, v in value.items() if k != "name"})
        raise ConfigError(f"{what} must be a name or a mapping with a 'name' key, not {redact(value)!r}")

    def with_option(self, key: str, value: Any) -> Component:
        """Return a copy with one option set."""
        return Component(self.name, {**self.options, key: value})

    def __repr__(self) -> str:
        return f"Component(name={self.name!r}, options={redact(self.options)!r})"


@dataclass(frozen=True)
class Config:
    """Every setting burstmap reads, typed; build it with `load_config`."""

    backend: Component = Component("local")
    storage: Component = Component("local")
    prefix: str = "burstmap"
    timeout: float | None = None
    worker_retries: int = 2
    outage_limit: float = 60.0
    progress: bool | None = None
    secret_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.timeout is not None and (not isinstance(self.timeout, (int, float)) or self.timeout <= 0):
            raise ConfigError(f"timeout must be a positive number of seconds, not {self.timeout!r}")
        if not isinstance(self.outage_limit, (int, float)) or self.outage_limit <= 0:
            raise ConfigError(f"outage_limit must be a positive number of seconds, not {self.outage_limit!r}")
        if not isinstance(self.worker_retries, int) or self.worker_retries < 0:
            raise ConfigError(f"worker_retries must be a non-negative integer, not {self.worker_retries!r}")
        if not isinstance(self.prefix, str) or not self.prefix or self.prefix.startswith("/"):
            raise ConfigError(f"prefix must be a relative key prefix, not {self.prefix!r}")

    def secret(self) -> bytes:
        """The HMAC key that signs payloads: configured, or generated once per user."""
        if self.secret_key:
            return self.secret_key.encode()
        return _user_secret()


_FIELDS = {f.name for f in dataclasses.fields(Config)}


def config_path() -> Path:
    """Where the configuration file is read from."""
    return Path(os.environ.get("BURSTMAP_CONFIG") or Path(platformdirs.user_config_dir("burstmap")) / "config.yaml")


def secret_key_path() -> Path:
    """Where the generated per-user HMAC key is kept (mode 0600)."""
    return Path(platformdirs.user_config_dir("burstmap")) / "secret.key"


def _user_secret() -> bytes:
    path = secret_key_path()
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path.read_bytes().strip()


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        if "BURSTMAP_CONFIG" in os.environ:
            raise ConfigError(f"config file {path} (from BURSTMAP_CONFIG) does not exist") from None
        return {}
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings")
    unknown = set(data) - _FIELDS
    if unknown:
        raise ConfigError(f"config file {path}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(_FIELDS))}")
    return data


def _read_env(settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Apply ``BURSTMAP_*`` variables to ``settings``; return the backend and storage options they set."""
    options: dict[str, dict[str, Any]] = {"backend": {}, "storage": {}}
    for var, raw in sorted(os.environ.items()):
        if not var.startswith(_ENV_PREFIX) or var[len(_ENV_PREFIX):] in _NOT_SETTINGS:
            continue
        name = var[len(_ENV_PREFIX):].lower()
        value = raw if name == "secret_key" else yaml.safe_load(raw)
        for part in ("backend", "storage"):
            if name.startswith(part + "_"):
                current = Component.parse(settings.get(part, "local"), part)
                settings[part] = current.with_option(name[len(part) + 1:], value)
                options[part][name[len(part) + 1:]] = value
                break
        else:
            if name not in _FIELDS:
                raise ConfigError(f"unknown environment variable {var}; known: BURSTMAP_CONFIG, "
                                  + ", ".join(_ENV_PREFIX + f.upper() for f in sorted(_FIELDS)))
            settings[name] = value
    return options


def load_config(**overrides: Any) -> Config:
    """Build the configuration: file, then environment, then ``overrides`` (``None`` means unset).

    A backend or store named in ``overrides`` keeps the options configured for it: all of them if
    the file or environment named the same one, else those of ``BURSTMAP_BACKEND_*`` / ``BURSTMAP_STORAGE_*``.
    """
    settings = _read_file(config_path())
    env_options = _read_env(settings)
    unknown = set(overrides) - _FIELDS
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(_FIELDS))}")
    for part in ("backend", "storage"):
        if isinstance(overrides.get(part), str):
            current = Component.parse(settings.get(part, "local"), part)
            same = overrides[part] == current.name
            overrides[part] = Component(overrides[part], current.options if same else env_options[part])
    settings.update({k: v for k, v in overrides.items() if v is not None})
    if settings.get("progress") == "auto":
        settings["progress"] = None
    for part in ("backend", "storage"):
        if part in settings:
            settings[part] = Component.parse(settings[part], part)
    return Config(**settings)
