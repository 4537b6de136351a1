"""One frozen settings tree, read from an optional TOML file and `TELEMED_*` variables.

Every field carries its documentation, unit and bounds in its metadata; `docs/configuration.md`
is generated from them (`python -m telemed.settings --markdown`) and a test keeps it current.
Environment names are `TELEMED_<SECTION>_<FIELD>` (top-level fields: `TELEMED_<FIELD>`);
lists are comma-separated. The environment wins over the file.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from mis.clients import parse_networks
from mis.webhooks import parse_endpoint
from signaling.tokens import load_public_key
from telemed import settings_doc
from telemed.settings_doc import ENV_PREFIX, _sections, env_name
from telemed.settings_field import SettingsError
from telemed.settings_schema import (
    AuthSettings,
    CallSettings,
    HttpSettings,
    LogSettings,
    MediaSettings,
    NodeSettings,
    RecordingSettings,
    RedisSettings,
    Settings,
    TurnSettings,
)
from web.security import check_origin

__all__ = [
    "AuthSettings",
    "CallSettings",
    "HttpSettings",
    "LogSettings",
    "MediaSettings",
    "NodeSettings",
    "RecordingSettings",
    "RedisSettings",
    "Settings",
    "SettingsError",
    "TurnSettings",
    "load_settings",
]



def _convert(label: str, tp: Any, raw: Any, meta: Mapping[str, Any]) -> Any:
    """Coerce `raw` (a string from the environment, or a TOML value) to `tp`."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if raw not in choices:
            raise SettingsError(f"{label}: expected one of {', '.join(choices)}, got {raw!r}")
        return raw
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if isinstance(raw, str):
            items: list[Any] = [s.strip() for s in raw.split(",") if s.strip()]
        elif isinstance(raw, list):
            items = raw
        else:
            raise SettingsError(f"{label}: expected a list, got {raw!r}")
        return tuple(_convert(label, item_tp, item, {}) for item in items)
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"{label}: optional settings are expressed with empty defaults")
    value: Any
    if tp is bool:
        if isinstance(raw, bool):
            value = raw
        elif isinstance(raw, str) and raw.lower() in ("1", "true", "yes", "on"):
            value = True
        elif isinstance(raw, str) and raw.lower() in ("0", "false", "no", "off"):
            value = False
        else:
            raise SettingsError(f"{label}: expected true or false, got {raw!r}")
        return value
    if tp is int:
        if isinstance(raw, bool):
            raise SettingsError(f"{label}: expected an integer, got {raw!r}")
        try:
            value = int(raw)
        except (TypeError, ValueError):
            raise SettingsError(f"{label}: expected an integer, got {raw!r}") from None
    elif tp is float:
        if isinstance(raw, bool):
            raise SettingsError(f"{label}: expected a number, got {raw!r}")
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise SettingsError(f"{label}: expected a number, got {raw!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise SettingsError(f"{label}: expected a finite number, got {raw!r}")
    elif tp is str:
        if not isinstance(raw, str):
            raise SettingsError(f"{label}: expected a string, got {raw!r}")
        value = raw
    else:
        raise TypeError(f"{label}: unsupported setting type {tp!r}")
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and value < lo:
        raise SettingsError(f"{label}: must be at least {lo}, got {value}")
    if hi is not None and value > hi:
        raise SettingsError(f"{label}: must be at most {hi}, got {value}")
    return value


def _build(cls: type, section: str | None, file_values: Mapping[str, Any],
           env: Mapping[str, str]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in file_values:
        if key not in known:
            where = f"[{section}]" if section else "top level"
            raise SettingsError(f"config file: unknown setting {key!r} in {where}")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            sub = file_values.get(f.name, {})
            if not isinstance(sub, Mapping):
                raise SettingsError(f"config file: [{f.name}] must be a table")
            kwargs[f.name] = _build(tp, f.name, sub, env)  # type: ignore[arg-type]
            continue
        name = env_name(section, f.name)
        if name in env:
            kwargs[f.name] = _convert(name, tp, env[name], f.metadata)
        elif f.name in file_values:
            label = f"{section}.{f.name}" if section else f.name
            kwargs[f.name] = _convert(label, tp, file_values[f.name], f.metadata)
    return cls(**kwargs)


def _check_env(env: Mapping[str, str]) -> None:
    """An unknown TELEMED_ variable is almost always a typo: refuse it."""
    valid = {env_name(None, f.name) for f in dataclasses.fields(Settings)
             if f.name not in _sections()}
    valid.add(ENV_PREFIX + "CONFIG")
    for section, cls in _sections().items():
        valid.update(env_name(section, f.name) for f in dataclasses.fields(cls))
    for key in env:
        if key.startswith(ENV_PREFIX) and key not in valid and not key.startswith(
            ENV_PREFIX + "TEST_"
        ):
            raise SettingsError(f"{key}: unknown setting")


def load_settings(
    env: Mapping[str, str] | None = None, config_file: str | os.PathLike[str] | None = None
) -> Settings:
    """Settings from `config_file` (or `$TELEMED_CONFIG`) overlaid with the environment."""
    env = os.environ if env is None else env
    _check_env(env)
    path = config_file or env.get(ENV_PREFIX + "CONFIG")
    values: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as fh:
                values = tomllib.load(fh)
        except OSError as exc:
            raise SettingsError(f"{ENV_PREFIX}CONFIG: cannot read {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{ENV_PREFIX}CONFIG: {path} is not valid TOML: {exc}") from None
    settings: Settings = _build(Settings, None, values, env)
    _check_together(settings)
    return settings


_TURN_URL = re.compile(
    r"^(?P<scheme>turns?):(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:(?P<port>\d{1,5}))?"
    r"(\?transport=(?P<transport>udp|tcp))?$")


def check_turn_url(url: str) -> None:
    """An RTCIceServer TURN URL (RFC 7065) a browser accepts, or ValueError."""
    match = _TURN_URL.match(url)
    if match is None:
        raise ValueError(f"{url!r} is not turn:host[:port][?transport=udp|tcp] or turns:…")
    if match["port"] is not None and not 0 < int(match["port"]) < 65536:
        raise ValueError(f"{url!r}: port out of range")
    if match["scheme"] == "turns" and match["transport"] == "udp":
        raise ValueError(f"{url!r}: turns: runs over TCP (TLS), not UDP")


def read_public_key(path: str) -> Any:
    """The PEM public key in `path`, as the token verifier takes it."""
    try:
        return load_public_key(Path(path).read_bytes())
    except OSError as exc:
        raise OSError(exc.strerror or str(exc)) from None


def _check_together(settings: Settings) -> None:
    """Rules that span settings."""
    turn = settings.turn
    for url in turn.urls:
        try:
            check_turn_url(url)
        except ValueError as exc:
            raise SettingsError(f"turn.urls: {exc}") from None
    if turn.provider in ("coturn-secret", "coturn-redis", "return") and not turn.urls:
        raise SettingsError(f"turn.urls: required when turn.provider is {turn.provider}")
    if turn.provider == "coturn-secret" and not turn.secrets:
        raise SettingsError("turn.secrets: required when turn.provider is coturn-secret")
    for path in settings.auth.jwt_public_keys:
        try:
            read_public_key(path)
        except (OSError, ValueError, TypeError) as exc:
            raise SettingsError(f"auth.jwt_public_keys: {path}: {exc}") from None
    try:
        parse_networks(settings.http.trusted_proxies)
    except ValueError as exc:
        raise SettingsError(f"http.trusted_proxies: {exc}") from None
    for origin in settings.http.frame_ancestors:
        try:
            check_origin(origin)
        except ValueError as exc:
            raise SettingsError(f"http.frame_ancestors: {exc}") from None
    hooks = settings.webhooks
    if hooks.endpoints and not hooks.secret:
        raise SettingsError("webhooks.secret: required when webhooks.endpoints is set")
    for entry in hooks.endpoints:
        try:
            parse_endpoint(entry)
        except ValueError as exc:
            raise SettingsError(f"webhooks.endpoints: {exc}") from None


def describe(settings: Settings) -> dict[str, Any]:
    """Settings as a dict with secrets masked, for logs and diagnostics."""
    def walk(obj: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                out[f.name] = walk(value)
            elif f.metadata.get("secret") and value:
                out[f.name] = "***"
            else:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out
    return walk(settings)


if __name__ == "__main__":  # pragma: no cover
    if sys.argv[1:] == ["--markdown"]:
        print(settings_doc.markdown())
    else:
        import json

        print(json.dumps(describe(load_settings()), indent=2))
