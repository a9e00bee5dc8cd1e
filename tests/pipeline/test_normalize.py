"""Table tests for the normalize stage: capi-reference.md §3.3 vectors plus our own rules."""

from __future__ import annotations

import hashlib
import ipaddress
import pickle
import re
from datetime import date, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.pipeline import geo, usstates
from gateway.pipeline.normalize import (
    ALIASES,
    CLEAR_FIELDS,
    HASHED_FIELDS,
    WEAK_IDENTIFIER_SETS,
    NormalizationError,
    hash_value,
    normalize_user_data,
    normalize_value,
    weak_identifiers_problem,
)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# capi-reference.md §3.3, every row: (field, input, country, normalized, sha256 or None).
REFERENCE_VECTORS = [
    ("em", "  John.Doe@Example.COM ", None, "john.doe@example.com", None),
    (
        "em",
        "John_Smith@gmail.com",
        None,
        "john_smith@gmail.com",
        "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f",
    ),
    ("ph", "+1 (555) 123-4567", None, "15551234567", None),
    (
        "ph",
        "(650)555-1212",
        "us",
        "16505551212",
        "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176",
    ),
    ("ph", "0044 20 7946 0958", None, "442079460958", None),
    ("ph", "+1.650.555.1212", None, "16505551212", None),
    ("fn", "  Mary ", None, "mary", None),
    ("fn", "Mary-Jane O'Neil", None, "maryjaneoneil", None),
    ("ct", "New York", None, "newyork", None),
    ("st", "new york", None, "ny", None),
    ("zp", "M1 1AE", None, "m11ae", None),
    ("country", "United States", None, "us", None),
    ("db", "1990-01-31", None, "19900131", None),
    ("ge", "Female", None, "f", None),
    ("external_id", "  User-123 ", None, "user-123", None),
]


@pytest.mark.parametrize(("field", "raw", "country", "normalized", "digest"), REFERENCE_VECTORS)
def test_reference_vectors(
    field: str, raw: str, country: str | None, normalized: str, digest: str | None
) -> None:
    assert normalize_value(field, raw, country=country) == normalized
    hashed = hash_value(field, raw, country=country)
    assert hashed == sha(normalized)
    if digest is not None:
        assert hashed == digest


OWN_CASES = [
    # em
    ("em", "a.b+tag@sub.example.co.uk", None, "a.b+tag@sub.example.co.uk"),
    ("em", "   ", None, None),
    # ph: international forms
    ("ph", "+44 (0)20 7946 0958", None, "442079460958"),
    ("ph", "+39 06 1234 5678", None, "390612345678"),
    ("ph", "0039 06 1234 5678", "gb", "390612345678"),
    ("ph", "+33 (0)6 12 34 56 78", None, "33612345678"),
    ("ph", "+49 (0)30 1234567", "us", "49301234567"),
    ("ph", "+44 7911 123456", None, "447911123456"),
    ("ph", "+250 06 123 456", None, "25006123456"),  # Rwanda: valid only with its 0
    ("ph", "\uff0b44 7911 123456", None, "447911123456"),  # full-width plus
    ("ph", "tel: +1 650 555 1212", None, "16505551212"),
    # ph: national forms with a known country
    ("ph", "020 7946 0958", "gb", "442079460958"),
    ("ph", "07911 123456", "gb", "447911123456"),
    ("ph", "44 20 7946 0958", "gb", "442079460958"),
    ("ph", "06 12 34 56 78", "fr", "33612345678"),
    ("ph", "06 1234 5678", "it", "390612345678"),
    ("ph", "8 912 345 67 89", "ru", "79123456789"),
    ("ph", "1-650-555-1212", "us", "16505551212"),
    ("ph", "650.555.1212", "us", "16505551212"),
    ("ph", "650 555 1212", "ca", "16505551212"),
    ("ph", "011 44 20 7946 0958", "us", "442079460958"),  # NANP international prefix
    ("ph", "٠٧٩١١ ١٢٣٤٥٦", "gb", "447911123456"),  # Arabic-Indic digits
    # ph: no country, but plausibly international already
    ("ph", "15551234567", None, "15551234567"),
    ("ph", "442079460958", None, "442079460958"),
    ("ph", "n/a", None, None),
    # fn / ln / ct
    ("fn", "Valéry", None, "valéry"),
    ("fn", "Vale\u0301ry", None, "valéry"),  # decomposed accent composes to the same bytes
    ("ln", "Dr. Smith-Jones Jr.", None, "drsmithjonesjr"),
    ("fn", "प्रिया", None, "प्रिया"),  # combining vowel signs are kept
    ("fn", "Анна", None, "анна"),
    ("fn", "!!!", None, None),
    ("ct", "St. Louis", None, "stlouis"),
    ("ct", "São Paulo", None, "sãopaulo"),
    ("ct", "Winston-Salem 27101", None, "winstonsalem"),
    # st
    ("st", "California", "us", "ca"),
    ("st", "N.Y.", "us", "ny"),
    ("st", "NY", None, "ny"),
    ("st", "District of Columbia", None, "dc"),
    ("st", "Puerto Rico", "us", "pr"),
    ("st", "Bayern", "de", "bayern"),
    ("st", "New York", "gb", "newyork"),
    ("st", "Île-de-France", "fr", "îledefrance"),
    ("st", "QC", "ca", "qc"),
    # zp
    ("zp", "94035-1234", None, "94035"),
    ("zp", "940351234", None, "94035"),
    ("zp", "94035 1234", "us", "94035"),
    ("zp", "SW1A 1AA", "gb", "sw1a1aa"),
    ("zp", "SW1A 1AA", None, "sw1a1aa"),
    ("zp", "10115", "de", "10115"),
    ("zp", "K1A 0B1", "ca", "k1a0b1"),
    ("zp", "123-4567", "jp", "1234567"),
    # country
    ("country", "US", None, "us"),
    ("country", "USA", None, "us"),
    ("country", "U.S.A.", None, "us"),
    ("country", "United States of America", None, "us"),
    ("country", "United Kingdom", None, "gb"),
    ("country", "UK", None, "gb"),
    ("country", "Great Britain", None, "gb"),
    ("country", "GBR", None, "gb"),
    ("country", "Deutschland", None, "de"),
    ("country", "germany", None, "de"),
    ("country", "The Netherlands", None, "nl"),
    ("country", "Cote d'Ivoire", None, "ci"),
    ("country", "Côte d\u2019Ivoire", None, "ci"),  # typographic apostrophe
    ("country", "South Korea", None, "kr"),
    ("country", "Bosnia & Herzegovina", None, "ba"),
    # external_id keeps its punctuation
    ("external_id", "ABC_123.x", None, "abc_123.x"),
]


@pytest.mark.parametrize(("field", "raw", "country", "normalized"), OWN_CASES)
def test_own_cases(field: str, raw: str, country: str | None, normalized: str | None) -> None:
    assert normalize_value(field, raw, country=country) == normalized
    expected = None if normalized is None else sha(normalized)
    assert hash_value(field, raw, country=country) == expected


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("1990-01-31", "19900131"),
        ("1990/01/31", "19900131"),
        ("1990.01.31", "19900131"),
        ("19900131", "19900131"),
        ("1990-1-5", "19900105"),
        ("1990-01-31T00:00:00", "19900131"),
        ("1990-01-31T23:59:59+02:00", "19900131"),
        ("1990-01-31 08:00", "19900131"),
        ("01/31/1990", "19900131"),
        ("31/01/1990", "19900131"),
        ("31.01.1990", "19900131"),
        ("  31.01.1990 ", "19900131"),
        # Ambiguous: month first (US) with / or -, day first with dots (European).
        ("02/03/1990", "19900203"),
        ("02-03-1990", "19900203"),
        ("02.03.1990", "19900302"),
        ("13/03/1990", "19900313"),
        ("1900-01-01", "19000101"),
    ],
)
def test_date_of_birth_formats(raw: str, normalized: str) -> None:
    assert normalize_value("db", raw) == normalized


@pytest.mark.parametrize(
    "raw",
    [
        "1990-02-30",
        "1990-13-01",
        "13/13/1990",
        "1899-12-31",
        (date.today() + timedelta(days=1)).isoformat(),
        "31/01/90",
        "January 31, 1990",
        "yesterday",
        "1990",
    ],
)
def test_date_of_birth_rejected(raw: str) -> None:
    with pytest.raises(NormalizationError) as info:
        normalize_value("db", raw)
    assert info.value.field == "db"


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        *[(word, "f") for word in ["f", "F", "female", "Woman", "w", "girl", "Frau", "femme"]],
        ("MUJER ", "f"),
        *[(word, "m") for word in ["m", "M", "male", "Man", "boy", "Mann", "homme", " hombre"]],
    ],
)
def test_gender_synonyms(raw: str, normalized: str) -> None:
    assert normalize_value("ge", raw) == normalized


@pytest.mark.parametrize(
    ("field", "raw", "country"),
    [
        ("em", "foo", None),
        ("em", "foo@bar", None),
        ("em", "foo bar@example.com", None),
        ("em", "@example.com", None),
        ("ge", "x", None),
        ("ge", "other", None),
        ("country", "Narnia", None),
        ("country", "ZZ", None),
        ("ph", "(650)555-1212", None),
        ("ph", "020 7946 0958", None),
        ("ph", "+0 20 7946 0958", None),
        ("ph", "+44", None),
        ("ph", "0700 123", None),
        ("ph", "6505551212", None),  # would read as a valid +65 number: refused, not guessed
        ("ph", "011", "us"),
        ("zz", "value", None),
        ("client_ip_address", "1.2.3.4", None),
    ],
)
def test_invalid_values_raise(field: str, raw: str, country: str | None) -> None:
    with pytest.raises(NormalizationError) as info:
        normalize_value(field, raw, country=country)
    assert info.value.field == field
    assert info.value.message


def test_phone_error_names_the_fix() -> None:
    with pytest.raises(NormalizationError) as info:
        hash_value("ph", "(650)555-1212")
    assert "country calling code" in info.value.message
    assert "+44" in info.value.message


def test_unknown_country_error_names_the_fix() -> None:
    with pytest.raises(NormalizationError) as info:
        normalize_value("country", "Narnia")
    assert info.value.field == "country"
    assert "use a 2-letter ISO 3166-1 code such as 'us'" in info.value.message


def test_invalid_phone_country_argument_raises() -> None:
    with pytest.raises(NormalizationError) as info:
        normalize_value("ph", "020 7946 0958", country="atlantis")
    assert info.value.field == "country"


def test_country_argument_accepts_names() -> None:
    assert normalize_value("ph", "020 7946 0958", country="United Kingdom") == "442079460958"


def test_error_is_value_error_and_pickles() -> None:
    err = NormalizationError("em", "'foo' does not look like an email address")
    assert isinstance(err, ValueError)
    assert str(err) == "em: 'foo' does not look like an email address"
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.field, copy.message) == (err.field, err.message)


def test_long_values_are_truncated_in_messages() -> None:
    with pytest.raises(NormalizationError) as info:
        normalize_value("em", "x" * 500)
    assert len(info.value.message) < 200


# --- already-hashed values ------------------------------------------------------------------

HEX64 = "A" * 32 + "0123456789abcdef" * 2


@pytest.mark.parametrize("field", sorted(HASHED_FIELDS))
def test_64_hex_passes_through_lowercased(field: str) -> None:
    assert hash_value(field, f"  {HEX64} ") == HEX64.lower()
    assert normalize_value(field, HEX64) == HEX64.lower()


def test_32_hex_is_not_treated_as_hashed() -> None:
    md5ish = "0123456789abcdef0123456789ABCDEF"
    assert hash_value("external_id", md5ish) == sha(md5ish.lower())
    # As an email it is simply not an email: it must never be forwarded as if hashed.
    with pytest.raises(NormalizationError):
        hash_value("em", md5ish)
    email = f"{md5ish}@example.com"
    assert hash_value("em", email) == sha(email.lower())


def test_hash_value_empty_is_none() -> None:
    assert hash_value("fn", "   ") is None
    assert hash_value("em", "") is None


# --- normalize_user_data --------------------------------------------------------------------


def test_user_data_aliases_are_mapped() -> None:
    out = normalize_user_data(
        {
            "email": "John_Smith@gmail.com",
            "phone": "(650)555-1212",
            "first_name": "Mary",
            "last_name": "O'Neil",
            "gender": "female",
            "date_of_birth": "1990-01-31",
            "city": "New York",
            "state": "New York",
            "zip": "10001-1234",
            "country": "United States",
            "external_id": " User-123 ",
            "ip": " 203.0.113.9 ",
            "user_agent": " Mozilla/5.0 ",
        }
    )
    assert out == {
        "em": "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f",
        "ph": "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176",
        "fn": sha("mary"),
        "ln": sha("oneil"),
        "ge": sha("f"),
        "db": sha("19900131"),
        "ct": sha("newyork"),
        "st": sha("ny"),
        "zp": sha("10001"),
        "country": sha("us"),
        "external_id": sha("user-123"),
        "client_ip_address": "203.0.113.9",
        "client_user_agent": "Mozilla/5.0",
    }


def test_every_alias_targets_a_known_field() -> None:
    assert set(ALIASES.values()) <= HASHED_FIELDS | CLEAR_FIELDS
    assert not HASHED_FIELDS & CLEAR_FIELDS


@pytest.mark.parametrize(("alias", "key"), [("email", "em"), ("ip", "client_ip_address")])
def test_alias_and_key_together_is_an_error(alias: str, key: str) -> None:
    value = "a@example.com" if key == "em" else "1.2.3.4"
    with pytest.raises(NormalizationError) as info:
        normalize_user_data({key: value, alias: value})
    assert info.value.field == key
    assert alias in info.value.message


def test_unknown_field_is_an_error() -> None:
    with pytest.raises(NormalizationError) as info:
        normalize_user_data({"em": "a@example.com", "emial": "b@example.com"})
    assert info.value.field == "emial"
    assert info.value.message.startswith("unknown user_data field 'emial'")


def test_lists_drop_empties_and_duplicates() -> None:
    out = normalize_user_data(
        {
            "em": ["A@Example.com", "", "  ", None, "a@example.com ", "b@example.com"],
            "fn": ["", "!!"],
            "ph": [],
            "ln": "  ",
            "st": None,
        }
    )
    assert out == {"em": [sha("a@example.com"), sha("b@example.com")]}


def test_list_input_gives_list_output_even_for_one_value() -> None:
    assert normalize_user_data({"em": ["a@example.com"]}) == {"em": [sha("a@example.com")]}
    assert normalize_user_data({"em": "a@example.com"}) == {"em": sha("a@example.com")}


def test_user_data_country_drives_phone_and_zip() -> None:
    out = normalize_user_data({"ph": "020 7946 0958", "zp": "SW1A 1AA", "country": "UK"})
    assert out == {"ph": sha("442079460958"), "zp": sha("sw1a1aa"), "country": sha("gb")}


def test_default_country_used_when_user_data_has_none() -> None:
    out = normalize_user_data({"ph": "(650) 555-1212", "st": "California"}, default_country="us")
    assert out == {"ph": sha("16505551212"), "st": sha("ca")}
    # The user_data's own country beats the default, and the default is never added as a field.
    out = normalize_user_data({"ph": "020 7946 0958", "country": "gb"}, default_country="us")
    assert out == {"ph": sha("442079460958"), "country": sha("gb")}


def test_hashed_country_falls_back_to_default() -> None:
    out = normalize_user_data({"ph": "020 7946 0958", "country": sha("gb")}, default_country="gb")
    assert out == {"ph": sha("442079460958"), "country": sha("gb")}


def test_national_phone_without_any_country_raises() -> None:
    with pytest.raises(NormalizationError) as info:
        normalize_user_data({"phone": "020 7946 0958"})
    assert info.value.field == "ph"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"ph": 16505551212}, {"ph": sha("16505551212")}),
        ({"zp": 94035}, {"zp": sha("94035")}),
        ({"external_id": 42}, {"external_id": sha("42")}),
        ({"external_id": [42, "x"]}, {"external_id": [sha("42"), sha("x")]}),
    ],
)
def test_integers_accepted_for_numeric_fields(
    data: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert normalize_user_data(data) == expected


@pytest.mark.parametrize(
    "data",
    [
        {"em": 42},
        {"ph": 1.5},
        {"ph": True},
        {"fn": {"first": "x"}},
        {"em": ["a@example.com", 3]},
        {"client_ip_address": 1234},
    ],
)
def test_other_types_raise(data: dict[str, Any]) -> None:
    with pytest.raises(NormalizationError) as info:
        normalize_user_data(data)
    assert info.value.field == next(iter(data))


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("::ffff:203.0.113.9", "203.0.113.9"),
        ("::FFFF:192.0.2.1", "192.0.2.1"),
        (" 2001:DB8:0:0:0:0:0:1 ", "2001:db8::1"),
        ("198.51.100.7", "198.51.100.7"),
    ],
)
def test_client_ip_address(raw: str, normalized: str) -> None:
    assert normalize_user_data({"ip": raw}) == {"client_ip_address": normalized}


def _ip_as_before(text: str) -> str | None:
    """What `ipaddress` alone made of an address, before IPv4 took the inet_pton path."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


_OCTET = st.one_of(
    st.integers(0, 999).map(str),
    st.text("0123456789", min_size=1, max_size=4),
    st.sampled_from(["", "+1", "-1", "0x1", "1e1", "\u0661", " 1", "1\x00"]),
)


@given(st.lists(_OCTET, min_size=1, max_size=6).map(".".join))
@settings(max_examples=2000)
def test_client_ip_address_fast_path_agrees(text: str) -> None:
    expected = _ip_as_before(text)
    if expected is None:
        if text.strip():
            with pytest.raises(NormalizationError):
                normalize_user_data({"ip": text})
        return
    assert normalize_user_data({"ip": text}) == {"client_ip_address": expected}


@pytest.mark.parametrize("text", ["01.2.3.4", "1.2.3.04", "256.1.1.1", "1.2.3", "127.1"])
def test_client_ip_address_not_ipv4(text: str) -> None:
    with pytest.raises(NormalizationError):
        normalize_user_data({"ip": text})


@pytest.mark.parametrize("raw", ["not-an-ip", "256.1.1.1", "1.2.3.4:8080", "example.com"])
def test_invalid_ip_raises(raw: str) -> None:
    with pytest.raises(NormalizationError) as info:
        normalize_user_data({"client_ip_address": raw})
    assert info.value.field == "client_ip_address"


def test_clear_fields_are_stripped_not_hashed() -> None:
    fbc = "fb.1.1700000000000.IwAR2xYz_AbC"
    out = normalize_user_data(
        {
            "fbc": f" {fbc} ",
            "fbp": "fb.1.1700000000000.1234567890",
            "client_ip_address": "",
            "page_id": 1234,
            "lead_id": "",
        }
    )
    assert out == {"fbc": fbc, "fbp": "fb.1.1700000000000.1234567890", "page_id": 1234}


# --- weak identifiers -----------------------------------------------------------------------


def test_weak_sets_match_reference() -> None:
    assert set(WEAK_IDENTIFIER_SETS) == {
        frozenset({"ct", "country", "st", "zp", "ge", "client_user_agent"}),
        frozenset({"db", "client_user_agent"}),
        frozenset({"fn", "ge"}),
        frozenset({"ln", "ge"}),
    }


@pytest.mark.parametrize(
    "fields",
    [
        {"fn", "ge"},
        {"ln", "ge"},
        {"db", "client_user_agent"},
        {"ct", "st", "client_user_agent"},
        {"ct", "country", "st", "zp", "ge", "client_user_agent"},
        {"ge"},
        {"client_user_agent"},
    ],
)
def test_weak_identifier_sets_rejected(fields: set[str]) -> None:
    problem = weak_identifiers_problem(dict.fromkeys(fields, "x"))
    assert problem is not None
    assert problem.startswith("user_data carries only ")
    assert "Meta rejects events whose only identifiers are" in problem
    assert (
        "add em, ph, external_id, client_ip_address with client_user_agent, fbp or fbc" in problem
    )


def test_weak_message_lists_fields_in_stable_order() -> None:
    problem = weak_identifiers_problem({"ge": "x", "fn": "y"})
    assert problem is not None
    assert problem.startswith("user_data carries only fn, ge: ")


@pytest.mark.parametrize(
    "user_data",
    [
        {"em": sha("a@example.com")},
        {"client_ip_address": "1.2.3.4", "client_user_agent": "Mozilla/5.0"},
        {"fbp": "fb.1.1700000000000.1234567890"},
        {"fn": "x", "ln": "y", "ge": "z"},
        {"external_id": [sha("x")]},
    ],
)
def test_strong_identifiers_accepted(user_data: dict[str, Any]) -> None:
    assert weak_identifiers_problem(user_data) is None


@pytest.mark.parametrize("user_data", [{}, {"em": ""}, {"em": [], "fbp": None}, {"ph": ["", "  "]}])
def test_empty_user_data_rejected(user_data: dict[str, Any]) -> None:
    problem = weak_identifiers_problem(user_data)
    assert problem is not None
    assert "add em" in problem


def test_weak_check_ignores_empty_values() -> None:
    assert weak_identifiers_problem({"fn": "x", "ge": "y", "em": ""}) is not None


def test_weak_check_after_normalization() -> None:
    data = normalize_user_data({"first_name": "Mary", "gender": "female", "email": " "})
    assert set(data) == {"fn", "ge"}
    assert weak_identifiers_problem(data) is not None


# --- reference tables -----------------------------------------------------------------------


def test_country_tables_are_complete() -> None:
    assert len(geo.ALPHA2) == 249
    assert set(geo.ALPHA3_TO_ALPHA2.values()) == geo.ALPHA2
    assert all(len(code) == 2 and code.islower() for code in geo.ALPHA2)
    assert all(len(code) == 3 and code.islower() for code in geo.ALPHA3_TO_ALPHA2)
    assert set(geo.COUNTRY_NAMES.values()) == geo.ALPHA2  # every country has a name


@pytest.mark.parametrize("code", sorted(geo.ALPHA2))
def test_every_alpha2_and_alpha3_normalizes(code: str) -> None:
    assert normalize_value("country", code.upper()) == code
    alpha3 = next(a3 for a3, a2 in geo.ALPHA3_TO_ALPHA2.items() if a2 == code)
    assert normalize_value("country", alpha3.upper()) == code


def test_us_state_table_covers_states_dc_and_territories() -> None:
    assert len(usstates.US_STATE_CODES) == 56
    for code, name in usstates.US_STATE_CODES.items():
        assert normalize_value("st", name, country="us") == code
        assert normalize_value("st", name.upper()) == code


# --- robustness -----------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, database=None)
@given(
    st.sampled_from(sorted(HASHED_FIELDS)),
    st.text(max_size=40) | st.from_regex(r"\+?[0-9 ()./-]{0,20}", fullmatch=True),
    st.sampled_from([None, "us", "gb", "it", "fr", "ar", "br"]),
)
def test_only_normalization_errors_escape(field: str, raw: str, country: str | None) -> None:
    try:
        result = hash_value(field, raw, country=country)
    except NormalizationError as err:
        assert err.field in (field, "country")
        assert err.message
    else:
        assert result is None or re.fullmatch(r"[0-9a-f]{64}", result)
