"""Reference tables for US state normalization: USPS codes of the states, DC and the inhabited
territories, and the names that lead to them (Meta wants the code for a US state).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from gateway.pipeline.geo import index_names

__all__ = ["US_STATE_CODES", "US_STATE_NAMES", "state_key"]


def state_key(text: str) -> str:
    """Fold a US state name or code (`N.Y.`, `New York`) to its letters-only lowercase key."""
    return "".join(ch for ch in text.casefold() if ch.isalpha())


US_STATE_CODES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "al": "Alabama",
        "ak": "Alaska",
        "az": "Arizona",
        "ar": "Arkansas",
        "ca": "California",
        "co": "Colorado",
        "ct": "Connecticut",
        "de": "Delaware",
        "fl": "Florida",
        "ga": "Georgia",
        "hi": "Hawaii",
        "id": "Idaho",
        "il": "Illinois",
        "in": "Indiana",
        "ia": "Iowa",
        "ks": "Kansas",
        "ky": "Kentucky",
        "la": "Louisiana",
        "me": "Maine",
        "md": "Maryland",
        "ma": "Massachusetts",
        "mi": "Michigan",
        "mn": "Minnesota",
        "ms": "Mississippi",
        "mo": "Missouri",
        "mt": "Montana",
        "ne": "Nebraska",
        "nv": "Nevada",
        "nh": "New Hampshire",
        "nj": "New Jersey",
        "nm": "New Mexico",
        "ny": "New York",
        "nc": "North Carolina",
        "nd": "North Dakota",
        "oh": "Ohio",
        "ok": "Oklahoma",
        "or": "Oregon",
        "pa": "Pennsylvania",
        "ri": "Rhode Island",
        "sc": "South Carolina",
        "sd": "South Dakota",
        "tn": "Tennessee",
        "tx": "Texas",
        "ut": "Utah",
        "vt": "Vermont",
        "va": "Virginia",
        "wa": "Washington",
        "wv": "West Virginia",
        "wi": "Wisconsin",
        "wy": "Wyoming",
        "dc": "District of Columbia",
        "pr": "Puerto Rico",
        "gu": "Guam",
        "vi": "U.S. Virgin Islands",
        "as": "American Samoa",
        "mp": "Northern Mariana Islands",
    }
)

_US_STATE_ALIASES: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "dc": ("Washington DC", "Washington, D.C.", "D.C."),
        "vi": ("Virgin Islands", "US Virgin Islands", "United States Virgin Islands"),
        "mp": ("Northern Marianas", "Mariana Islands"),
    }
)


US_STATE_NAMES: Final[Mapping[str, str]] = index_names(
    [(name, code) for code, name in US_STATE_CODES.items()]
    + [(name, code) for code, names in _US_STATE_ALIASES.items() for name in names],
    state_key,
)
