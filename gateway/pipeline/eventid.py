"""Event ids: an `event_id` template (`purchase-{order_id}`) and its values in, an id out.

Rules and webhooks fill their templates the same way; it lives below both so that neither
has to import the other.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from gateway.pipeline.matchers import text
from gateway.pipeline.rulefile import TEMPLATE_FIELD, template_fields


def render_event_id(template: str | None, values: Mapping[str, Any], rule: str) -> str:
    """`purchase-{order_id}` filled in; a random id when there is no template or no value."""
    if template is None:
        return str(uuid.uuid4())
    for name in template_fields(template):
        if values.get(name) in (None, "", []):
            # No key to deduplicate on: count the event rather than drop it.
            return f"{rule}-{uuid.uuid4()}"
    # One pass, so a value that itself reads "{other}" is not substituted again.
    out = TEMPLATE_FIELD.sub(lambda m: text(values[m.group(1)]), template)
    return out[:256]
