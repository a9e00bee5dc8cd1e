"""Property tests: where Meta's SDK normalizes correctly, our hashes must equal its hashes.

The SDK is a test-only oracle (capi-reference.md §3.3 lists where it is wrong); the inputs below
stay inside the domain where it is right.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import phonenumbers
import pycountry
import pytest
from facebook_business.adobjects.serverside.normalize import Normalize
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gateway.pipeline import geo
from gateway.pipeline.normalize import hash_value

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    database=None,  # keep the shared working tree free of an example database
    suppress_health_check=[HealthCheck.too_slow],
)
GATEWAY = Path(__file__).resolve().parents[2] / "gateway"
HEX32 = re.compile(r"[0-9a-f]{32}")
SDK_NAME = re.compile(r"\bfacebook_business\b")
# pycountry comes with the SDK, so it is installed but must not be a runtime dependency either.
PYCOUNTRY_IMPORT = re.compile(r"^\s*(?:from|import)\s+pycountry\b", re.MULTILINE)

CALLING_CODES = sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE)
ASCII_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
DIGITS = "0123456789"
padding = st.sampled_from(["", " ", "  ", "\t", " \n"])


def sdk(field: str, value: str) -> str | None:
    result: str | None = Normalize.normalize_field(field, value)
    return result


def not_md5(value: str) -> bool:
    # The SDK takes any 32-hex string as already hashed; we deliberately do not.
    return HEX32.fullmatch(value.strip().lower()) is None


@st.composite
def emails(draw: st.DrawFn) -> str:
    local = draw(st.text(ASCII_LETTERS + DIGITS + "._", min_size=1, max_size=20))
    labels = draw(
        st.lists(st.text(ASCII_LETTERS + DIGITS, min_size=1, max_size=10), min_size=1, max_size=3)
    )
    tld = draw(st.text(ASCII_LETTERS, min_size=2, max_size=6))
    return draw(padding) + f"{local}@{'.'.join(labels)}.{tld}" + draw(padding)


def digits(size: int, first: str = "123456789") -> st.SearchStrategy[str]:
    return st.builds(
        lambda head, tail: head + tail,
        st.sampled_from(first),
        st.text(DIGITS, min_size=size - 1, max_size=size - 1),
    )


separators = st.sampled_from([" ", "-", "", "  ", " - "])


@st.composite
def nanp_phones(draw: st.DrawFn) -> str:
    area, exchange = draw(digits(3, "23456789")), draw(digits(3, "23456789"))
    line = draw(st.text(DIGITS, min_size=4, max_size=4))
    sep = draw(separators)
    if draw(st.booleans()):
        area = f"({area})"
    return draw(padding) + f"+1{draw(separators)}{area}{sep}{exchange}{sep}{line}" + draw(padding)


@st.composite
def uk_mobiles(draw: st.DrawFn) -> str:
    rest = draw(st.text(DIGITS, min_size=9, max_size=9))
    sep = draw(separators)
    prefix = f"7{rest[:3]}"
    if draw(st.booleans()):
        prefix = f"({prefix})"
    return f"+44{draw(separators)}{prefix}{sep}{rest[3:6]}{sep}{rest[6:]}"


@st.composite
def international_phones(draw: st.DrawFn) -> str:
    # Any calling code with a national number that does not start with a trunk 0.
    code = draw(st.sampled_from(CALLING_CODES))
    national = draw(digits(draw(st.integers(6, 11))))
    cut = draw(st.integers(1, len(national) - 1))
    sep = draw(separators)
    return f"+{code}{sep}{national[:cut]}{sep}{national[cut:]}"


def cased(value: str) -> st.SearchStrategy[str]:
    return st.lists(st.booleans(), min_size=len(value), max_size=len(value)).map(
        lambda flags: "".join(ch.upper() if up else ch for ch, up in zip(value, flags, strict=True))
    )


countries = st.sampled_from(sorted(geo.ALPHA2)).flatmap(cased)
states = st.text(ASCII_LETTERS, min_size=2, max_size=2)
cities = st.text(ASCII_LETTERS + " ", min_size=1, max_size=30).filter(
    lambda s: any(ch.isalpha() for ch in s)
)
names = st.text(ASCII_LETTERS, min_size=1, max_size=20)
zips = st.builds(
    lambda five, four: five + (f"-{four}" if four else ""),
    st.text(DIGITS, min_size=5, max_size=5),
    st.none() | st.text(DIGITS, min_size=4, max_size=4),
)
external_ids = st.text(ASCII_LETTERS + DIGITS + "-_", min_size=1, max_size=40).filter(not_md5)


@SETTINGS
@given(emails())
def test_email_matches_sdk(value: str) -> None:
    assert hash_value("em", value) == sdk("em", value)


@SETTINGS
@given(nanp_phones() | uk_mobiles() | international_phones())
def test_international_phone_matches_sdk(value: str) -> None:
    assert hash_value("ph", value) == sdk("ph", value)


@SETTINGS
@given(padding, states, padding)
def test_two_letter_state_matches_sdk(before: str, value: str, after: str) -> None:
    text = before + value + after
    assert hash_value("st", text) == sdk("st", text)


@SETTINGS
@given(padding, countries, padding)
def test_country_code_matches_sdk(before: str, value: str, after: str) -> None:
    text = before + value + after
    assert hash_value("country", text) == sdk("country", text)


@SETTINGS
@given(cities)
def test_city_matches_sdk(value: str) -> None:
    assume(not_md5(value.replace(" ", "")))
    assert hash_value("ct", value) == sdk("ct", value)


@SETTINGS
@given(padding, zips, padding)
def test_zip_matches_sdk(before: str, value: str, after: str) -> None:
    text = before + value + after
    assert hash_value("zp", text) == sdk("zp", text)


@SETTINGS
@given(padding, names, padding, st.sampled_from(["fn", "ln"]))
def test_plain_names_match_sdk(before: str, value: str, after: str, field: str) -> None:
    assume(not_md5(value))
    text = before + value + after
    assert hash_value(field, text) == sdk(field, text)


@SETTINGS
@given(padding, external_ids, padding)
def test_external_id_matches_sdk(before: str, value: str, after: str) -> None:
    text = before + value + after
    assert hash_value("external_id", text) == sdk("external_id", text)


def test_reference_vector_hashes_match_sdk_where_it_is_right() -> None:
    assert hash_value("em", "John_Smith@gmail.com") == sdk("em", "John_Smith@gmail.com")
    assert hash_value("ph", "(650)555-1212", country="us") == sdk("ph", "+1 (650) 555-1212")


def test_country_tables_match_iso_3166() -> None:
    iso = {c.alpha_2.lower(): c.alpha_3.lower() for c in pycountry.countries}
    assert set(iso) == geo.ALPHA2
    assert dict(geo.ALPHA3_TO_ALPHA2) == {a3: a2 for a2, a3 in iso.items()}


@pytest.mark.parametrize("country", list(pycountry.countries), ids=lambda c: c.alpha_2)
def test_every_iso_english_name_normalizes(country: pycountry.db.Country) -> None:
    assert hash_value("country", country.name) == sdk("country", country.alpha_2)


def test_runtime_package_never_mentions_the_sdk() -> None:
    sources = {path: path.read_text(encoding="utf-8") for path in GATEWAY.rglob("*.py")}
    assert sources, "gateway sources not found"
    offenders = [
        str(path.relative_to(GATEWAY.parent))
        for path, text in sources.items()
        if SDK_NAME.search(text) or PYCOUNTRY_IMPORT.search(text)
    ]
    assert offenders == []


def test_runtime_import_does_not_load_the_sdk() -> None:
    code = (
        "import sys, gateway.pipeline.normalize as n; "
        "n.hash_value('country', 'United States'); "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('facebook_business', 'pycountry')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=GATEWAY.parent, timeout=30)
