"""Configuration: a YAML file, then environment variables, then keyword arguments, parsed once.

The file is ``$BURSTMAP_CONFIG`` or ``config.yaml`` in the per-user config directory::

    backend: {name: local, workers: 4}     # or just: backend: local
    storage: {name: local, path: /data/burstmap}
    prefix: burstmap
    timeout: 600
    worker_retries: 2                       # re-runs of a call whose worker died
    outage_limit: 60                        # seconds the client waits out an unreachable store
    progress: auto
    map_item_limit: 100000                  # refuse larger jobs (a guard against a runaway map)
    secret_key: ...                         # else generated into the per-user config dir

Environment variables override it: ``BURSTMAP_BACKEND``, ``BURSTMAP_STORAGE``, ``BURSTMAP_PREFIX``,
``BURSTMAP_TIMEOUT``, ``BURSTMAP_WORKER_RETRIES``, ``BURSTMAP_OUTAGE_LIMIT``, ``BURSTMAP_PROGRESS``,
``BURSTMAP_MAP_ITEM_LIMIT``, ``BURSTMAP_SECRET_KEY``, and ``BURSTMAP_BACKEND_<OPTION>`` / ``BURSTMAP_STORAGE_<OPTION>``
for one option of the backend or store (used only when the chosen backend or store takes that option).
Other ``BURSTMAP_*`` variables are not burstmap's settings and are left alone.

A backend or store is a name (``s3``), a mapping (``{name: s3, bucket: b}``) or where it is: a store
URL or path (``s3://bucket``, ``redis://host:6379/0``, ``file:///dir``, ``/dir``, ``./dir``) or a
backend URL (``tcp://scheduler:8786`` for Dask, ``redis://...`` or ``sqs://...`` for the queue of
``standalone`` workers). Named so, it keeps the options configured for the same name (an
``s3://bucket`` keeps the configured endpoint and credentials).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import platformdirs
import yaml

from . import registry
from .errors import ConfigError
from .redact import redact, redact_url

__all__ = ["Config", "Component", "load_config", "config_path", "secret_key_path"]

log = logging.getLogger(__name__)
_ENV_PREFIX = "BURSTMAP_"
_NOT_SETTINGS = {"CONFIG"}
#: URL scheme -> (the backend or store it names, the option the URL fills)
_SCHEMES: dict[str, dict[str, tuple[str, str]]] = {
    "storage": {"file": ("local", "path"), "s3": ("s3", "bucket"), "redis": ("redis", "url"),
                "rediss": ("redis", "url")},
    "backend": {"tcp": ("dask", "address"), "tls": ("dask", "address"), "redis": ("standalone", "queue"),
                "rediss": ("standalone", "queue"), "sqs": ("standalone", "queue")},
}


@dataclass(frozen=True)
class Component:
    """A backend or store: its registered name and the keyword arguments its class takes."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, value: Any, what: str) -> Component:
        """Read ``local``, ``{name: local, option: value, ...}``, or a URL or path (see the module's doc)."""
        if isinstance(value, Component):
            return value
        if isinstance(value, os.PathLike) or isinstance(value, str) and value.startswith(("/", "./", "../", "~")):
            if what == "storage":
                return cls("local", {"path": str(Path(value).expanduser().resolve())})
        if isinstance(value, str) and "://" in value:
            return _from_url(value, what)
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


def _from_url(url: str, what: str) -> Component:
    """The backend or store a URL names, with the option it fills."""
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES[what]:
        known = ", ".join(f"{scheme}://" for scheme in _SCHEMES[what])
        raise ConfigError(f"{what} URL {redact_url(url)!r}: unknown scheme; known: {known}")
    name, option = _SCHEMES[what][parts.scheme]
    if what == "backend":
        return Component(name, {option: url})
    path = unquote(parts.path)
    if name == "local":
        if parts.netloc not in ("", "localhost") or not path.startswith("/"):
            raise ConfigError(f"storage URL {url!r} must be file:///absolute/dir")
        return Component(name, {option: path})
    if name == "s3":
        if not parts.netloc or path.strip("/"):
            raise ConfigError(f"storage URL {url!r} must name a bucket and nothing in it: s3://bucket "
                              "(set prefix for a folder)")
        return Component(name, {option: parts.netloc})
    db = path.strip("/")
    if not db.isdigit() and db:
        raise ConfigError(f"storage URL {redact_url(url)!r} must name a database and nothing in it: redis://host:port/0")
    return Component(name, {option: urlunsplit(parts._replace(path=f"/{db or 0}", fragment=""))})


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
    map_item_limit: int | None = None
    secret_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.timeout is not None and (not isinstance(self.timeout, (int, float)) or self.timeout <= 0):
            raise ConfigError(f"timeout must be a positive number of seconds, not {self.timeout!r}")
        if not isinstance(self.outage_limit, (int, float)) or self.outage_limit <= 0:
            raise ConfigError(f"outage_limit must be a positive number of seconds, not {self.outage_limit!r}")
        if not isinstance(self.worker_retries, int) or self.worker_retries < 0:
            raise ConfigError(f"worker_retries must be a non-negative integer, not {self.worker_retries!r}")
        if self.map_item_limit is not None and (not isinstance(self.map_item_limit, int) or self.map_item_limit < 1):
            raise ConfigError(f"map_item_limit must be a positive integer, not {self.map_item_limit!r}")
        if not isinstance(self.prefix, str) or not self.prefix or self.prefix.startswith("/"):
            raise ConfigError(f"prefix must be a relative key prefix, not {self.prefix!r}")
        if self.progress not in (None, True, False):
            raise ConfigError(f"progress must be auto, true or false, not {self.progress!r}")

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
            if name in _FIELDS:
                settings[name] = value
            else:
                log.debug("burstmap: %s is not a setting; ignored", var)
    return options


def _without_foreign(component: Component, part: str, from_env: Mapping[str, Any]) -> Component:
    """Drop the options the environment set that the chosen backend or store does not take."""
    foreign = {k for k in from_env if not registry.accepts(part, component.name, k)}
    if not foreign:
        return component
    return Component(component.name, {k: v for k, v in component.options.items() if k not in foreign})


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
        if isinstance(overrides.get(part), (str, os.PathLike)):
            named = Component.parse(overrides[part], part)
            current = Component.parse(settings.get(part, "local"), part)
            kept = current.options if named.name == current.name else env_options[part]
            overrides[part] = Component(named.name, {**kept, **named.options})
    settings.update({k: v for k, v in overrides.items() if v is not None})
    if settings.get("progress") == "auto":
        settings["progress"] = None
    for part in ("backend", "storage"):
        if part in settings:
            settings[part] = _without_foreign(Component.parse(settings[part], part), part, env_options[part])
    return Config(**settings)
