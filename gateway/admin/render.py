"""The dashboard's Jinja2 environment: templates from gateway/admin/templates, escaped by default.

Every value a template prints is escaped unless it is `Markup` made here from numbers and
times, so a rule name, an error or an event name read from the store never becomes markup.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup


@functools.cache
def environment() -> Environment:
    """The one environment (templates are compiled once, on first use)."""
    env = Environment(
        loader=PackageLoader("gateway.admin", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(num=num, pct=pct, share=share, when=when)
    return env


def render(template: str, **context: Any) -> str:
    """`template` rendered with `context`."""
    return environment().get_template(template).render(**context)


def num(n: int) -> str:
    """1234 -> "1,234"."""
    return f"{n:,}"


def pct(share: float) -> str:
    """A share as a whole percentage; "<1%" rather than a misleading 0% for a few."""
    if 0 < share < 0.01:
        return "<1%"
    return f"{share:.0%}"


def share(value: float | None) -> str:
    """`pct`, or a dash where there is nothing to divide by."""
    return "—" if value is None else pct(value)


def when(ts: float | None) -> Markup:
    """A <time> element in UTC (admin.js shows it in the reader's zone)."""
    if ts is None:
        return Markup("")
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
    shown = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))
    return Markup('<time datetime="{}">{}</time>').format(iso, shown)
