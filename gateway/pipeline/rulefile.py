"""Rule files in (`rules/*.toml`), validated rule models out — or one clear error.

A rule file holds `[[rule]]` tables (page, form and click conversions) and `[[webhook]]`
tables (backend conversions). Everything a user can get wrong is reported as
"<file>: rule '<name>': <field>: <what is wrong and what to write instead>"; unknown keys
are errors, never ignored. Compiling the models into matchers lives in `rules`.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gateway.durations import parse_duration
from gateway.models import STANDARD_EVENTS
from gateway.pipeline.normalize import ALIASES, HASHED_FIELDS
from gateway.pipeline.rulemessages import each_error, first_error

# Where a value may come from, per kind of rule.
REQUEST_SOURCES = (
    "const",
    "query",
    "path",
    "form",
    "json",
    "cookie",
    "header",
    "response_header",
    "meta",
    "jsonld",
    "selector",
)
BROWSER_SOURCES = ("const", "data", "field", "query")
WEBHOOK_SOURCES = ("const", "json", "form", "header", "query")
ALL_SOURCES = tuple(dict.fromkeys(REQUEST_SOURCES + BROWSER_SOURCES + WEBHOOK_SOURCES))
# Sources that read the HTML of the response: the proxy scans the page for them.
HTML_SOURCES = frozenset({"meta", "jsonld", "selector"})
BODY_SOURCES = frozenset({"form", "json"})

# custom_data fields Meta defines; anything else goes under `custom`.
CUSTOM_DATA_TARGETS = (
    "value",
    "currency",
    "content_ids",
    "contents",
    "content_type",
    "content_name",
    "content_category",
    "num_items",
    "order_id",
    "search_string",
    "status",
    "predicted_ltv",
    "delivery_category",
)
# Customer fields a rule may fill from form/JSON input: normalized and hashed like all PII.
USER_DATA_TARGETS = tuple(sorted(set(HASHED_FIELDS) | set(ALIASES)))
TARGETS = CUSTOM_DATA_TARGETS + USER_DATA_TARGETS
NUMBER_TARGETS = frozenset({"value", "predicted_ltv"})
LIST_TARGETS = frozenset({"content_ids", "contents"})

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
TEMPLATE_FIELD = re.compile(r"\{([^{}]*)\}")
_STANDARD_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RuleError(Exception):
    """A rule file a user must fix; the message names file, rule and field."""


def check_event_name(value: str) -> str:
    """An event name, refused when it is a standard one written in another case.

    `purchase` would otherwise be sent as a custom event that no ads optimisation uses.
    """
    for standard in STANDARD_EVENTS:
        if value != standard and value.lower() == standard.lower():
            raise ValueError(
                f"{value!r} is not a standard event (names are case-sensitive); did you mean "
                f"{standard!r}? A custom event must not differ from a standard one by case only"
            )
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RegexCondition(_Strict):
    """`{ regex = "..." }`: the value must match (re.search)."""

    regex: str

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        _compile(value)
        return value


# true = present, false = absent, a scalar = equal (as text), a table = regex.
Condition = bool | str | int | float | RegexCondition


class ItemField(_Strict):
    """One field of each element of a list turned into `contents`."""

    key: str
    type: Literal["string", "number", "integer"] = "string"
    divide: float | None = Field(default=None, gt=0)
    decimal: Literal["auto", ".", ","] = "auto"


class SourceSpec(_Strict):
    """Where one value comes from and how it is converted."""

    source: str
    key: str | None = None
    value: Any = None
    attr: str | None = None
    type: Literal["string", "number", "integer", "list", "boolean"] | None = None
    decimal: Literal["auto", ".", ","] = "auto"
    divide: float | None = Field(default=None, gt=0)
    lower: bool = False
    upper: bool = False
    pattern: str | None = None
    split: str | None = None
    default: Any = None
    map: dict[str, str | ItemField] | None = None

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        if value not in ALL_SOURCES:
            raise ValueError(
                f"unknown source {value!r} (expected one of: {', '.join(REQUEST_SOURCES)}; "
                f"browser triggers: {', '.join(BROWSER_SOURCES)})"
            )
        return value

    @field_validator("pattern")
    @classmethod
    def _pattern_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            _compile(value)
        return value

    @field_validator("map")
    @classmethod
    def _map_targets(
        cls, value: dict[str, str | ItemField] | None
    ) -> dict[str, str | ItemField] | None:
        if value is not None and "id" not in value:
            raise ValueError("map needs at least an 'id' entry, e.g. map = { id = 'sku' }")
        return value


def _hold(value: Any) -> float:
    seconds = parse_duration(value)
    if not 0 <= seconds <= 3600:
        raise ValueError('hold must be between 0 and 1h, e.g. hold = "2m"')
    return seconds


class StitchSpec(_Strict):
    """Keep the visitor's context under identifying keys, for later backend events."""

    keys: list[str] = Field(min_length=1)
    ttl: float = 7 * 86400.0
    share_event_id: bool = False

    @field_validator("ttl", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)


class RuleModel(_Strict):
    """One `[[rule]]` table."""

    name: str
    event: str = Field(min_length=1, max_length=50)
    enabled: bool = True
    trigger: Literal["request", "click", "submit"] = "request"
    selector: str | None = None
    # what the request and response must look like
    host: str | list[str] | None = None
    path: str | list[str] | None = None
    path_regex: str | None = None
    method: str | list[str] | None = None
    query: dict[str, Condition] = Field(default_factory=dict)
    content_type: str | list[str] | None = None
    form: dict[str, Condition] = Field(default_factory=dict)
    json_body: dict[str, Condition] = Field(default_factory=dict, alias="json")
    status: int | list[int] | str | None = None
    response_type: str | list[str] | None = None
    referrer: str | RegexCondition | None = None
    # what the event carries
    event_id: str | None = Field(default=None, min_length=1, max_length=200)
    require: list[str] = Field(default_factory=list)
    action_source: str = "website"
    extract: dict[str, Any] = Field(default_factory=dict)
    custom: dict[str, Any] = Field(default_factory=dict)
    stitch: StitchSpec | None = None
    # Wait before the first send, for copies to merge ("2m"; 0: none); unset: assembly_hold.
    hold: float | None = None

    @field_validator("hold", mode="before")
    @classmethod
    def _hold(cls, value: Any) -> float | None:
        return None if value is None else _hold(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError("use 1-64 letters, digits, '_', '-' or '.'")
        return value

    @field_validator("event")
    @classmethod
    def _event(cls, value: str) -> str:
        return check_event_name(value)

    @field_validator("path_regex")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            _compile(value)
        return value

    @field_validator("method")
    @classmethod
    def _methods(cls, value: str | list[str] | None) -> str | list[str] | None:
        for method in [value] if isinstance(value, str) else value or []:
            if method.upper() not in _STANDARD_METHODS:
                raise ValueError(f"unknown method {method!r}")
        return value


class SignatureSpec(_Strict):
    """How a webhook proves it comes from its provider."""

    type: Literal["stripe", "hmac"]
    secrets: list[str] = Field(default_factory=list)
    header: str | None = None
    encoding: Literal["hex", "base64"] = "hex"
    prefix: str = ""
    timestamp_header: str | None = None
    tolerance: float = 300.0
    template: str = "{body}"

    @field_validator("tolerance", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)


class WebhookModel(_Strict):
    """One `[[webhook]]` table: a provider's payload at {prefix}/hooks/<hook> → events."""

    name: str
    hook: str
    event: str = Field(min_length=1, max_length=50)
    enabled: bool = True
    signature: SignatureSpec
    when: dict[str, Condition] = Field(default_factory=dict)
    event_id: str | None = Field(default=None, min_length=1, max_length=200)
    delivery_id: str | None = None
    require: list[str] = Field(default_factory=list)
    action_source: str = "website"
    event_time: str | None = None
    event_source_url: str | None = None
    extract: dict[str, Any] = Field(default_factory=dict)
    custom: dict[str, Any] = Field(default_factory=dict)
    stitch: list[str] = Field(default_factory=list)
    use_stitched_event_id: bool = False
    # Wait before the first send, for copies to merge ("2m"; 0: none); unset: assembly_hold.
    hold: float | None = None

    @field_validator("hold", mode="before")
    @classmethod
    def _hold(cls, value: Any) -> float | None:
        return None if value is None else _hold(value)

    @field_validator("name", "hook")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError("use 1-64 letters, digits, '_', '-' or '.'")
        return value

    @field_validator("event")
    @classmethod
    def _event(cls, value: str) -> str:
        return check_event_name(value)


class RuleFile(_Strict):
    """The top level of a rule file."""

    rule: list[dict[str, Any]] = Field(default_factory=list)
    webhook: list[dict[str, Any]] = Field(default_factory=list)


def read_rule_file(
    path: Path, problems: list[str] | None = None
) -> tuple[list[RuleModel], list[WebhookModel]]:
    """Parse and validate one file; RuleError naming file, rule and field otherwise.

    With a `problems` list, every invalid table is reported there (and left out) instead.
    """
    where = display_path(path)

    def fail(message: str) -> tuple[list[RuleModel], list[WebhookModel]]:
        if problems is None:
            raise RuleError(message)
        problems.append(message)
        return [], []

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        return fail(f"{where}: cannot read the file ({exc.strerror})")
    except UnicodeDecodeError as exc:
        return fail(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})")
    except tomllib.TOMLDecodeError as exc:
        return fail(f"{where}: TOML syntax error: {exc}")
    except RecursionError:
        # tomllib parses nested arrays and tables recursively.
        return fail(f"{where}: arrays or tables nested too deeply")
    try:
        top = RuleFile.model_validate(data)
    except ValidationError as exc:
        return fail(
            f"{where}: {first_error(exc, RuleFile)} (a rule file holds [[rule]] and "
            "[[webhook]] tables)"
        )
    rules: list[RuleModel] = []
    hooks: list[WebhookModel] = []
    for kind, raws, out in (("rule", top.rule, rules), ("webhook", top.webhook, hooks)):
        model = RuleModel if kind == "rule" else WebhookModel
        for i, raw in enumerate(raws):
            try:
                out.append(_model(model, raw, where, kind, i))
            except RuleError as exc:
                if problems is None or not isinstance(exc.__cause__, ValidationError):
                    raise
                # Every key of the table that is wrong, not only the one said first.
                label = _label(raw, kind, i)
                problems += [
                    f"{where}: {label}: {text}" for text in each_error(exc.__cause__, model)
                ]
    return rules, hooks


def _label(raw: dict[str, Any], kind: str, index: int) -> str:
    if isinstance(raw.get("name"), str):
        return f"{kind} {raw['name']!r}"
    return f"{kind} #{index + 1}"


def _model(model: type[Any], raw: dict[str, Any], where: str, kind: str, index: int) -> Any:
    label = _label(raw, kind, index)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise RuleError(f"{where}: {label}: {first_error(exc, model)}") from exc


def display_path(path: Path) -> str:
    """A rule file's name as errors show it: relative to the working directory if inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except (re.error, OverflowError, RecursionError) as exc:
        # OverflowError: a{99999999999}; RecursionError: thousands of nested groups.
        shown = pattern if len(pattern) <= 80 else pattern[:77] + "..."
        raise ValueError(f"invalid regular expression {shown!r}: {exc}") from None


def template_fields(template: str) -> list[str]:
    """The `{name}` placeholders of an event_id template."""
    return TEMPLATE_FIELD.findall(template)
