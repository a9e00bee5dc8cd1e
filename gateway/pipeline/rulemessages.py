"""pydantic's validation errors as the one sentence a rule file's author can act on.

pydantic reports a wrong value once per union member it tried and names the members in the
error's location; these functions pick the error that got furthest, drop the member names,
and say "unknown key; did you mean `x`?" or "required key is missing" in place of pydantic's
wording.
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails


def each_error(exc: ValidationError, model: type[BaseModel]) -> list[str]:
    """One sentence per key of the table that is wrong, the most specific error of each."""
    by_key: dict[str, list[ErrorDetails]] = {}
    for err in exc.errors():
        by_key.setdefault(str(err["loc"][0]) if err["loc"] else "", []).append(err)
    return [describe(_most_specific(errors), model) for errors in by_key.values()]


def first_error(exc: ValidationError, model: type[BaseModel] | None = None) -> str:
    """The error that says most, as one sentence naming its key."""
    return describe(specific_error(exc), model)


def describe(err: ErrorDetails, model: type[BaseModel] | None) -> str:
    """`key.path: what is wrong`, with a did-you-mean for a misspelt key of `model`."""
    loc = error_location(err)
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "unknown key (check its spelling against the rules guide in README.md)"
        known = known_keys(model) if model is not None and len(err["loc"]) == 1 else []
        close = difflib.get_close_matches(str(err["loc"][0]), known, n=1, cutoff=0.6)
        if close:
            message = f"unknown key; did you mean `{close[0]}`?"
    elif err["type"] == "missing":
        message = "required key is missing"
    return f"{loc}: {message}" if loc else message


def known_keys(model: type[BaseModel]) -> list[str]:
    """The keys `model` takes, by their aliases."""
    return [field.alias or name for name, field in model.model_fields.items()]


def specific_error(exc: ValidationError) -> ErrorDetails:
    """The error that says most: for a union, the member that got furthest into the value."""
    return _most_specific(exc.errors())


def _most_specific(errors: list[ErrorDetails]) -> ErrorDetails:
    # A table with a misspelt key fails as "not a string" too; its location is the longer one.
    # A misspelt key is also a missing one: naming the misspelling says more.
    return max(
        errors,
        key=lambda e: (sum(not _is_union_tag(p) for p in e["loc"]), e["type"] == "extra_forbidden"),
    )


def error_location(err: ErrorDetails) -> str:
    """The dotted key path of a validation error, without pydantic's union member names."""
    return ".".join(str(p) for p in err["loc"] if not _is_union_tag(p))


def _is_union_tag(part: Any) -> bool:
    # pydantic names union members in locations ("str", "list[str]", "function-after[...]").
    return isinstance(part, str) and (
        part
        in {"str", "int", "float", "bool", "list[str]", "list[int]", "RegexCondition", "ItemField"}
        or part.startswith(("function-", "is-instance["))
    )
