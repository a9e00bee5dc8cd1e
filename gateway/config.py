"""Loading configuration: env, a TOML file and CLI flags merged into one `Settings`.

Precedence, lowest first: environment (`META_*`, `CAPIGW_<KEY>`), the TOML file
(`--config`), command-line flags. This is the order design.md fixes as the contract.
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from gateway.catalogsettings import CatalogSettings
from gateway.settings import ConfigError, PixelSettings, Settings
from gateway.sitesettings import PER_SITE_KEYS

_META_ENV = {
    "META_PIXEL_ID": "pixel_id",
    "META_ACCESS_TOKEN": "access_token",
    "META_TEST_EVENT_CODE": "test_event_code",
    "META_APP_SECRET": "app_secret",
}


# The test suite's own switches share the prefix; a developer who exported them for a test
# run must still be able to start the gateway in the same shell.
_HARNESS_ENV = frozenset({"CAPIGW_CONFIG", "CAPIGW_TEST_POSTGRES", "CAPIGW_SKIP_BROWSER"})


def _env_values(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, key in _META_ENV.items():
        if environ.get(name):
            values[key] = environ[name]
    for name, raw in environ.items():
        if not name.startswith("CAPIGW_") or name in _HARNESS_ENV:
            continue
        key = name[len("CAPIGW_") :].lower()
        if not raw.strip():
            continue  # an empty variable is an unset one (shell and compose habit)
        if key == "catalog_id":
            # The one `[catalog]` key with a variable of its own (design.md's contract).
            values["catalog"] = {**values.get("catalog", {}), "catalog_id": raw.strip()}
            continue
        if key not in Settings.model_fields:
            close = difflib.get_close_matches(key, list(Settings.model_fields), n=1, cutoff=0.6)
            hint = (
                f"did you mean `CAPIGW_{close[0].upper()}`?"
                if close
                else "see the settings reference in README.md"
            )
            raise ConfigError(f"{name}: unknown setting {key!r}; {hint}")
        values[key] = _env_scalar(key, raw)
    return values


def _env_scalar(key: str, raw: str) -> Any:
    # Lists and tables may be given as JSON; everything else stays a string for pydantic.
    if key == "pixels" or (raw[:1] in "[{" and key not in {"pixel_id", "events_api_keys"}):
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"CAPIGW_{key.upper()}: not valid JSON ({exc.msg})") from exc
    return raw


def _file_values(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: config file not found; check --config") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text; save the config file as UTF-8") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    # `[gateway]` table or top-level keys: both read naturally.
    if isinstance(data.get("gateway"), dict):
        data = {**{k: v for k, v in data.items() if k != "gateway"}, **data["gateway"]}
    return data


@dataclass(frozen=True, slots=True)
class Sources:
    """Where each layer of configuration comes from."""

    config_file: Path | None = None
    environ: Mapping[str, str] | None = None
    flags: Mapping[str, Any] | None = None


def load_settings(sources: Sources) -> Settings:
    """Merge env < file < flags and validate; ConfigError names the key and the fix."""
    environ = os.environ if sources.environ is None else sources.environ
    layers: list[tuple[str, dict[str, Any]]] = [("environment", _env_values(environ))]
    config_file = sources.config_file
    if config_file is None and environ.get("CAPIGW_CONFIG"):
        config_file = Path(environ["CAPIGW_CONFIG"])
    if config_file is not None:
        layers.append((str(config_file), _file_values(config_file)))
    layers.append(
        ("command line", {k: v for k, v in (sources.flags or {}).items() if v is not None})
    )
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for name, values in layers:
        for key, value in values.items():
            if key == "config":
                continue
            if key == "catalog" and isinstance(value, dict) and isinstance(merged.get(key), dict):
                # CAPIGW_CATALOG_ID fills in a `[catalog]` table that leaves it out.
                value = {**merged[key], **value}
            merged[key] = value
            origin[key] = name
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        raise _describe(exc, origin) from None


def _describe(exc: ValidationError, origin: Mapping[str, str]) -> ConfigError:
    problems = [_problem(err, origin) for err in exc.errors()]
    more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
    return ConfigError(problems[0] + more, problems)


def _problem(err: ErrorDetails, origin: Mapping[str, str]) -> str:
    loc = ".".join(str(part) for part in err["loc"]) or "config"
    top = str(err["loc"][0]) if err["loc"] else ""
    where = origin.get(top, "")
    message = err["msg"].removeprefix("Value error, ")
    if not err["loc"] and message.startswith("sites."):
        # A site's problem already names `sites.<name>.<key>`; say which file holds it.
        return f"{origin.get('sites', 'config')}: {message}"
    if err["type"] == "extra_forbidden":
        message = "unknown setting; " + (
            did_you_mean(str(err["loc"][-1]), _known_keys(err["loc"]))
            or "check the spelling against the settings reference in README.md"
        )
    return f"{where + ': ' if where else ''}{loc}: {message}"


def _known_keys(loc: tuple[int | str, ...]) -> list[str]:
    # `[[pixels]]` tables have their own keys; everything else is a top-level setting.
    if len(loc) == 3 and loc[0] == "pixels":
        return list(PixelSettings.model_fields)
    if len(loc) == 2 and loc[0] == "catalog":
        return list(CatalogSettings.model_fields)
    if loc and loc[0] == "sites":
        return ["name", "hosts", "default", *sorted(PER_SITE_KEYS), "events_api_keys"]
    return list(Settings.model_fields)


def did_you_mean(key: str, known: Iterable[str]) -> str | None:
    """ "did you mean `x`?" for the closest known key, or None when none is close."""
    found = difflib.get_close_matches(key.lower(), list(known), n=1, cutoff=0.6)
    return f"did you mean `{found[0]}`?" if found else None
