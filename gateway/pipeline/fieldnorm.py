"""One customer-information field at a time: its normal form and its SHA-256
(capi-reference.md §3). `gateway.pipeline.normalize` maps a whole user_data with these.

Meta matches on SHA-256 of a canonical form, so two spellings of the same email, phone or
city must end up byte-identical before hashing; where Meta's written rules and the official
SDK disagree, the written rules win (see §3.3).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable, Mapping
from datetime import date
from types import MappingProxyType
from typing import Any, Final

from gateway.pipeline.geo import ALPHA2, ALPHA3_TO_ALPHA2, COUNTRY_NAMES, country_key
from gateway.pipeline.phone import normalize_phone
from gateway.pipeline.phone import show_value as _show
from gateway.pipeline.usstates import US_STATE_NAMES, state_key


class NormalizationError(ValueError):
    """A user_data value that cannot be brought into the form Meta matches on."""

    field: str
    message: str

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def __reduce__(self) -> tuple[type[NormalizationError], tuple[str, str]]:
        # The default reduce would replay the combined text as `field` and lose `message`.
        return (type(self), (self.field, self.message))


HASHED_FIELDS: Final[frozenset[str]] = frozenset(
    {"em", "ph", "fn", "ln", "db", "ge", "ct", "st", "zp", "country", "external_id"}
)
_INT_FIELDS: Final[frozenset[str]] = frozenset({"ph", "zp", "external_id"})

_SHA256_HEX: Final = re.compile(r"[0-9a-fA-F]{64}")
_EMAIL: Final = re.compile(r"[^\s@]+@(?:[^\s@.]+\.)+[^\s@.]{2,}")
_ZIP_DROP: Final = re.compile(r"[\s\-\u2010-\u2015\u2212]+")
_US_ZIP: Final = re.compile(r"\d{5}(?:[\s-]?\d{4})?", re.ASCII)
_US_ZIP_HEAD: Final = re.compile(r"\d{5}", re.ASCII)
_DOB_YMD: Final = re.compile(r"(\d{4})([-/.])(\d{1,2})\2(\d{1,2})(?:[T ].*)?", re.ASCII)
_DOB_COMPACT: Final = re.compile(r"(\d{4})(\d{2})(\d{2})", re.ASCII)
_DOB_YEAR_LAST: Final = re.compile(r"(\d{1,2})([-/.])(\d{1,2})\2(\d{4})", re.ASCII)

_FEMALE: Final = frozenset({"f", "female", "woman", "w", "girl", "frau", "femme", "mujer"})
_MALE: Final = frozenset({"m", "male", "man", "boy", "mann", "homme", "hombre"})


def _is_letter(ch: str) -> bool:
    # Combining marks count: Indic scripts spell vowels with them, dropping them changes the name.
    return unicodedata.category(ch)[0] in "LM"


def _letters(value: str) -> str:
    return "".join(ch for ch in unicodedata.normalize("NFC", value).lower() if _is_letter(ch))


def _email(value: str, country: str | None) -> str | None:
    text = value.strip().lower()
    if not text:
        return None
    if not _EMAIL.fullmatch(text):
        raise NormalizationError("em", f"{_show(value)} does not look like an email address")
    return text


def _name(value: str, country: str | None) -> str | None:
    return _letters(value) or None


def _external_id(value: str, country: str | None) -> str | None:
    # Only trim and lowercase: the browser pixel must produce the same string.
    return value.strip().lower() or None


def _gender(value: str, country: str | None) -> str | None:
    text = value.strip().lower()
    if not text:
        return None
    if text in _FEMALE:
        return "f"
    if text in _MALE:
        return "m"
    raise NormalizationError("ge", f"{_show(value)} is not a gender Meta accepts: send 'f' or 'm'")


def _date_of_birth(value: str, country: str | None) -> str | None:
    """Date of birth as YYYYMMDD.

    Accepted: YYYY-MM-DD (also with / or . and an ISO time suffix), YYYYMMDD, and day/month
    with the year last. For D/M/Y vs M/D/Y ambiguity, month-first (US) unless the first number
    is > 12, then day-first; dot-separated dates with the year last (31.01.1990) are day-first,
    the European convention. Two-digit years are refused: the century is a guess.
    """
    text = unicodedata.normalize("NFKC", value).strip()
    if not text:
        return None
    if m := _DOB_YMD.fullmatch(text):
        year, month, day = int(m[1]), int(m[3]), int(m[4])
    elif m := _DOB_COMPACT.fullmatch(text):
        year, month, day = int(m[1]), int(m[2]), int(m[3])
    elif m := _DOB_YEAR_LAST.fullmatch(text):
        first, second, year = int(m[1]), int(m[3]), int(m[4])
        day_first = m[2] == "." or first > 12
        day, month = (first, second) if day_first else (second, first)
    else:
        raise NormalizationError(
            "db", f"{_show(value)} is not a date of birth we can read: use YYYY-MM-DD"
        )
    try:
        born = date(year, month, day)
    except ValueError:
        raise NormalizationError("db", f"{_show(value)} is not a real calendar date") from None
    if not date(1900, 1, 1) <= born <= date.today():
        raise NormalizationError(
            "db", f"{_show(value)} is not a plausible date of birth (1900 to today)"
        )
    return born.strftime("%Y%m%d")


def _city(value: str, country: str | None) -> str | None:
    return _letters(value) or None


def _state(value: str, country: str | None) -> str | None:
    if country in (None, "us") and (code := US_STATE_NAMES.get(state_key(value))):
        return code
    text = unicodedata.normalize("NFC", value).lower()
    return "".join(ch for ch in text if _is_letter(ch) or ch.isdecimal()) or None


def _zip(value: str, country: str | None) -> str | None:
    text = unicodedata.normalize("NFKC", value).strip()
    compact = _ZIP_DROP.sub("", text).lower()
    us = country == "us" or (country is None and _US_ZIP.fullmatch(text) is not None)
    # ZIP+4 narrows to a few houses; Meta matches on the 5-digit ZIP only.
    if us and (head := _US_ZIP_HEAD.match(compact)):
        return head.group()
    return compact or None


def _country_value(value: str, country: str | None) -> str | None:
    key = country_key(value)
    if not key:
        return None
    if len(key) == 2 and key in ALPHA2:
        return key
    if code := ALPHA3_TO_ALPHA2.get(key) or COUNTRY_NAMES.get(key):
        return code
    raise NormalizationError(
        "country",
        f"{_show(value)} is not a country we recognise: "
        "use a 2-letter ISO 3166-1 code such as 'us'",
    )


def _phone(value: str, country: str | None) -> str | None:
    try:
        return normalize_phone(value, country)
    except ValueError as exc:
        raise NormalizationError("ph", str(exc)) from None


_NORMALIZERS: Final[Mapping[str, Callable[[str, str | None], str | None]]] = MappingProxyType(
    {
        "em": _email,
        "ph": _phone,
        "fn": _name,
        "ln": _name,
        "db": _date_of_birth,
        "ge": _gender,
        "ct": _city,
        "st": _state,
        "zp": _zip,
        "country": _country_value,
        "external_id": _external_id,
    }
)


def _resolve_country(country: str | None) -> str | None:
    return _country_value(country, None) if country else None


def normalize_value(field: str, value: str, *, country: str | None = None) -> str | None:
    """Normalized (not hashed) value of one hashed field; None when nothing is left of it."""
    normalizer = _NORMALIZERS.get(field)
    if normalizer is None:
        raise NormalizationError(field, f"{field!r} is not a hashed user_data field")
    stripped = value.strip()
    if _SHA256_HEX.fullmatch(stripped):
        return stripped.lower()
    return normalizer(value, _resolve_country(country))


def hash_value(field: str, value: str, *, country: str | None = None) -> str | None:
    """SHA-256 hex of the normalized value; a 64-hex value is taken as already hashed."""
    stripped = value.strip()
    if _SHA256_HEX.fullmatch(stripped) and field in HASHED_FIELDS:
        return stripped.lower()
    normalized = normalize_value(field, value, country=country)
    if normalized is None:
        return None
    # JSON may carry a lone surrogate ("\\udcff"): not UTF-8, but still a value to hash.
    return hashlib.sha256(normalized.encode("utf-8", "surrogatepass")).hexdigest()


def field_strings(field: str, value: Any) -> tuple[list[str], bool]:
    """The string items of a hashed field's value and whether it was given as a list."""
    items, is_list = (list(value), True) if isinstance(value, list | tuple) else ([value], False)
    out: list[str] = []
    for item in items:
        if item is None:
            continue
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, int) and not isinstance(item, bool) and field in _INT_FIELDS:
            out.append(str(item))
        else:
            raise NormalizationError(
                field, f"{field} must be a string or a list of strings, not {type(item).__name__}"
            )
    return out, is_list


def event_country(value: Any, default_country: str | None) -> str | None:
    """The alpha-2 country used for phones, states and zips: user_data's own, else the default."""
    items, _ = field_strings("country", value)
    for item in items:
        if _SHA256_HEX.fullmatch(item.strip()):
            continue
        if code := _country_value(item, None):
            return code
    return _resolve_country(default_country)
