"""Phone numbers to Meta's matching form: digits only, with the country calling code.

Calling codes and trunk prefixes come from libphonenumber's metadata (phonenumberslite):
normalize, never validate, so an unusual but real number is not lost.
"""

from __future__ import annotations

import unicodedata

import phonenumbers


def show_value(value: str) -> str:
    """Quote a value for an error message without echoing an unbounded string."""
    return repr(value if len(value) <= 60 else value[:57] + "...")


def _digits(text: str) -> str:
    # isdecimal covers every script's digits; decimal() maps them to 0-9.
    return "".join(str(unicodedata.decimal(ch)) for ch in text if ch.isdecimal())


def _national_prefix(calling_code: int) -> str | None:
    region = phonenumbers.region_code_for_country_code(calling_code)
    if region == phonenumbers.REGION_CODE_FOR_NON_GEO_ENTITY:
        meta = phonenumbers.PhoneMetadata.metadata_for_nongeo_region(calling_code)
    else:
        meta = phonenumbers.PhoneMetadata.metadata_for_region(region)
    return meta.national_prefix if meta is not None else None


def _is_valid_phone(calling_code: int, national: str) -> bool:
    zeros = len(national) - len(national.lstrip("0"))
    number = phonenumbers.PhoneNumber(
        country_code=calling_code,
        national_number=int(national),
        italian_leading_zero=zeros > 0 or None,
        number_of_leading_zeros=zeros or None,
    )
    return bool(phonenumbers.is_valid_number(number))


def _international(digits: str, value: str) -> str:
    # Calling codes are prefix-free, so the first 1-3 digit match is the only match.
    sizes = (1, 2, 3) if digits[:1] not in ("", "0") else ()
    size = next(
        (n for n in sizes if int(digits[:n]) in phonenumbers.COUNTRY_CODE_TO_REGION_CODE), 0
    )
    if not size:
        raise ValueError(f"{show_value(value)} does not start with a known country calling code")
    code, rest = int(digits[:size]), digits[size:]
    if not rest:
        raise ValueError(f"{show_value(value)} has no number after the calling code")
    # "+44 (0)20 ..." habitually keeps the trunk 0; it is not dialled from abroad. Only
    # countries whose trunk prefix is 0 qualify (Italy has none: its 0 is part of the number),
    # and a number that is only valid with the 0 keeps it.
    if (
        rest.startswith("0")
        and _national_prefix(code) == "0"
        and not (_is_valid_phone(code, rest) and not _is_valid_phone(code, rest[1:] or "0"))
    ):
        rest = rest[1:]
    return f"{code}{rest}"


def _national(digits: str, region: str, value: str) -> str:
    code = phonenumbers.country_code_for_region(region)
    if code == 1:
        if digits.startswith("011"):  # NANP's international dialling prefix
            return _international(digits[3:], value)
        # NANP: 11 digits with a leading 1 already carry the country code.
        return digits if len(digits) == 11 and digits.startswith("1") else f"1{digits}"
    try:
        number = phonenumbers.parse(digits, region)
    except phonenumbers.NumberParseException:
        prefix = _national_prefix(code)
        if prefix and digits.startswith(prefix):
            digits = digits[len(prefix) :]
        return f"{code}{digits}"
    # parse() strips trunk prefixes (0, 8, 06...) and spots a calling code already present.
    return f"{number.country_code}{phonenumbers.national_significant_number(number)}"


def _plausibly_international(digits: str) -> bool:
    if digits.startswith("0"):
        return False
    try:
        number = phonenumbers.parse(f"+{digits}", None)
    except phonenumbers.NumberParseException:
        return False
    # About one 10-digit US national number in eight also reads as a valid foreign number
    # (6505551212 as +65...), so a number needs 11+ digits before we take it as international;
    # a short one is refused rather than hashed under a guessed country.
    return len(digits) >= 11 and bool(phonenumbers.is_possible_number(number))


def normalize_phone(value: str, country: str | None) -> str | None:
    """Digits with the country calling code, no trunk zero; None when there are no digits.

    Raises ValueError with a sentence naming the fix when the calling code is unknown.
    """
    text = unicodedata.normalize("NFKC", value).strip()
    digits = _digits(text)
    if not digits:
        return None
    international = text.startswith("+")
    if digits.startswith("00"):
        international, digits = True, digits[2:]
    if not digits:
        return None
    if international:
        return _international(digits, value)
    region = country.upper() if country else None
    if region and phonenumbers.country_code_for_region(region):
        return _national(digits, region, value)
    if _plausibly_international(digits):
        return _international(digits, value)
    raise ValueError(
        f"{show_value(value)} has no country calling code and the event has no country: "
        "add the country calling code (+44 20 7946 0958) or the event's country",
    )
