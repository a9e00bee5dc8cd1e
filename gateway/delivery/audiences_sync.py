"""Audience sync: configured audiences and the store in, Meta's Custom Audiences brought in step.

Per audience (site, name): compute the members' rows now (gateway/pipeline/audiences.py),
compare them with the rows Meta was last sent, and send only the difference:

1. create the audience when the store holds no id for it
   (`POST act_{ad_account_id}/customaudiences`, subtype CUSTOM, USER_PROVIDED_ONLY);
2. removals, then additions, through `DELETE` / `POST {audience_id}/users` with
   `payload = {"schema": [...], "data": [[...], ...]}`, at most 10,000 rows per call, each
   direction one `session` (`session_id`, `batch_seq` from 1, `last_batch_flag` on the last
   call, `estimated_num_total`);
3. every confirmed call is recorded at once, so a sync cut short resumes where it stopped.

Transport failures, 5xx and throttling are retried with the gateway's backoff; a refused token
(190, permissions) parks the audience until the token changes (its fingerprint is kept);
any other refusal is recorded as the audience's last error and retried at the next sync.
Dry run computes and records what would be sent and calls nothing. The periodic run in
`serve` is gateway/delivery/audiences_task.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.audiencesettings import AudienceSettings
from gateway.delivery.audiences import AudienceState
from gateway.delivery.graph import GraphClient, Outcome, SendResult
from gateway.delivery.graphanswers import local_result
from gateway.delivery.retry import RetryPolicy
from gateway.delivery.store import AudienceStore
from gateway.metrics import Metrics
from gateway.pipeline import audiences as rule
from gateway.pipeline.audiences import Row
from gateway.settings import Settings

log = logging.getLogger("gateway.audiences")

# Attempts per Graph call within one sync; a call still failing waits for the next sync.
_ATTEMPTS = 5
_RETRYABLE = (Outcome.RETRY, Outcome.THROTTLED)


@dataclass(frozen=True, slots=True)
class Target:
    """One configured audience of one site, with the account and token it syncs with."""

    site: str | None
    audience: AudienceSettings
    ad_account_id: str | None
    access_token: str | None
    app_secret: str | None

    @property
    def label(self) -> str:
        """`site/name`, or the name without sites."""
        return f"{self.site}/{self.audience.name}" if self.site else self.audience.name


def targets(settings: Settings, site: str | None = None) -> list[Target]:
    """Every configured audience (of `site` only, when given), per site with sites."""
    scopes: list[tuple[str | None, Settings]] = [
        (s.name, s.settings) for s in settings.site_list()
    ] or [(None, settings)]
    out = []
    for name, scoped in scopes:
        if site is not None and name != site:
            continue
        pixels = scoped.effective_pixels()
        first = pixels[0] if pixels else None
        token = scoped.audiences_access_token or (first.access_token if first else None)
        secret = first.app_secret if first else scoped.app_secret
        out += [
            Target(name, audience, scoped.ad_account_id, token, secret)
            for audience in scoped.audiences
        ]
    return out


def fingerprint(token: str | None) -> str:
    """A token's stored form when Meta refused it (never the token itself)."""
    return hashlib.sha256((token or "").encode()).hexdigest()[:16]


@dataclass(slots=True)
class SyncReport:
    """What one audience's sync did."""

    site: str | None
    name: str
    audience_id: str | None
    size: int
    coverage: dict[str, float]
    added: list[Row] = field(default_factory=list)
    removed: list[Row] = field(default_factory=list)
    dry_run: bool = False
    parked: bool = False
    error: str | None = None

    def to_json(self, max_rows: int = 1000) -> dict[str, Any]:
        """The `audiences sync --json` entry of this audience: counts, and the rows added and
        removed as Meta received them (SHA-256 hashes in `schema` order, never a clear
        value), at most `max_rows` of each; `truncated` says some were left out."""
        return {
            "site": self.site,
            "name": self.name,
            "id": self.audience_id,
            "size": self.size,
            "added": len(self.added),
            "removed": len(self.removed),
            "schema": list(rule.SCHEMA),
            "added_rows": [list(r) for r in self.added[:max_rows]],
            "removed_rows": [list(r) for r in self.removed[:max_rows]],
            "truncated": len(self.added) > max_rows or len(self.removed) > max_rows,
            "dry_run": self.dry_run,
            "parked": self.parked,
            "error": self.error,
        }


async def current_rows(store: AudienceStore, target: Target, *, now: float) -> dict[str, Row]:
    """The rows of the audience's members now, by row hash."""
    audience = target.audience
    spec = rule.Rule(
        events=frozenset(audience.events),
        exclude_events=frozenset(audience.exclude_events),
        window=audience.window,
        min_count=audience.min_count,
        min_value=audience.min_value,
        currency=audience.currency,
    )
    names = sorted(spec.events | spec.exclude_events)
    hits = await store.hits(target.site, names, since=now - spec.window, now=now)
    members = rule.members(spec, hits, now=now)
    # Identifiers come from profiles alone: `forget` erases a person's profile, so the next
    # sync takes them out, even while their delivered events are still kept.
    found = await store.profiles(sorted(members), now=now)
    out: dict[str, Row] = {}
    for visitor in sorted(members):
        values = rule.row(found.get(visitor, {}))
        if values is not None:
            out[rule.row_hash(values)] = values
    return out


class AudienceSync:
    """Syncs audiences to Meta over a Graph client (see the module docstring)."""

    def __init__(
        self,
        store: AudienceStore,
        graph: GraphClient | None,
        policy: RetryPolicy,
        *,
        dry_run: bool = False,
        batch_rows: int = rule.MAX_ROWS,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.graph = graph
        self.policy = policy
        self.dry_run = dry_run or graph is None
        self.batch_rows = batch_rows

    async def sync_all(
        self, chosen: Sequence[Target], *, now: float | None = None
    ) -> list[SyncReport]:
        """Sync each of `chosen` in turn; one audience's failure does not stop the others."""
        return [await self.sync(target, now=now) for target in chosen]

    async def sync(self, target: Target, *, now: float | None = None) -> SyncReport:
        """Bring one audience in step with Meta (or record what would be sent)."""
        report = await self._sync(target, now=now)
        if self.metrics is not None:
            outcome = (
                "dry_run"
                if report.dry_run
                else "parked"
                if report.parked
                else "failed"
                if report.error
                else "synced"
            )
            self.metrics.audience_synced(
                target.site,
                target.audience.name,
                outcome,
                added=0 if report.dry_run else len(report.added),
                removed=0 if report.dry_run else len(report.removed),
            )
        return report

    async def _sync(self, target: Target, *, now: float | None) -> SyncReport:
        now = time.time() if now is None else now
        name = target.audience.name
        state = await self.store.state(target.site, name)
        current = await current_rows(self.store, target, now=now)
        sent = await self.store.sent_rows(target.site, name)
        changes = rule.diff(sent, current)
        report = SyncReport(
            target.site,
            name,
            state.audience_id,
            len(current),
            rule.coverage(current.values()),
            added=list(changes.add.values()),
            removed=list(changes.remove.values()),
            dry_run=self.dry_run,
        )
        if self.dry_run:
            await self.store.save(
                replace(
                    state,
                    synced_at=now,
                    last_result={
                        "dry_run": True,
                        "added": len(changes.add),
                        "removed": len(changes.remove),
                    },
                )
            )
            return report
        token = target.access_token
        if state.blocked_token is not None and state.blocked_token == fingerprint(token):
            report.parked, report.error = True, state.last_error
            report.added, report.removed = [], []
            return report
        failure = await self._push(target, state, changes, report)
        after = await self.store.sent_rows(target.site, name)
        held = len(after)
        # What Meta confirmed (all of it, unless a call failed part way).
        report.added = [r for h, r in changes.add.items() if h in after]
        report.removed = [r for h, r in changes.remove.items() if h not in after]
        done = replace(
            state,
            audience_id=report.audience_id,
            size=held,
            coverage=report.coverage if failure is None else state.coverage,
            last_error=None,
            blocked_token=None,
        )
        if failure is None:
            done = replace(
                done,
                synced_at=now,
                last_result={"added": len(changes.add), "removed": len(changes.remove)},
            )
        else:
            report.error = failure.message or failure.error_label()
            done = replace(done, last_error=report.error)
            if failure.outcome is Outcome.BLOCKED:
                report.parked = True
                done = replace(done, blocked_token=fingerprint(token))
            log.warning(
                "Audience %r was not synced: %s (fbtrace_id %s).",
                target.label,
                report.error,
                failure.fbtrace_id,
            )
        await self.store.save(done)
        return report

    async def _push(
        self, target: Target, state: AudienceState, changes: rule.Changes, report: SyncReport
    ) -> SendResult | None:
        """Create the audience if needed, then send removals and additions; the first
        failure that retries could not overcome, else None."""
        if report.audience_id is None:
            if not target.ad_account_id:
                return local_result("ad_account_id is not set", Outcome.REJECTED)
            result = await self._call(
                "POST",
                f"act_{target.ad_account_id}/customaudiences",
                target,
                {
                    "name": target.audience.name,
                    "subtype": "CUSTOM",
                    "customer_file_source": "USER_PROVIDED_ONLY",
                    "description": target.audience.description
                    or f"capi-gateway audience {target.label}",
                },
            )
            if result.outcome is not Outcome.SENT:
                return result
            new_id = (result.body or {}).get("id")
            if not isinstance(new_id, str | int):
                return local_result(
                    "Meta created the audience but answered without its id", Outcome.REJECTED
                )
            report.audience_id = str(new_id)
            # Kept at once: a failure below must not create a second audience next time.
            await self.store.save(replace(state, audience_id=report.audience_id))
        for method, rows in (("DELETE", changes.remove), ("POST", changes.add)):
            failure = await self._send_rows(target, report.audience_id, method, rows)
            if failure is not None:
                return failure
        return None

    async def _send_rows(
        self, target: Target, audience_id: str, method: str, rows: dict[str, Row]
    ) -> SendResult | None:
        items = list(rows.items())
        if not items:
            return None
        session_id = secrets.randbits(62) + 1
        slices = [items[i : i + self.batch_rows] for i in range(0, len(items), self.batch_rows)]
        for seq, part in enumerate(slices, start=1):
            form = {
                "payload": json.dumps(
                    {"schema": list(rule.SCHEMA), "data": [list(r) for _, r in part]},
                    separators=(",", ":"),
                ),
                "session": json.dumps(
                    {
                        "session_id": session_id,
                        "batch_seq": seq,
                        "last_batch_flag": seq == len(slices),
                        "estimated_num_total": len(items),
                    },
                    separators=(",", ":"),
                ),
            }
            result = await self._call(method, f"{audience_id}/users", target, form)
            if result.outcome is not Outcome.SENT:
                return result
            if method == "POST":
                await self.store.apply(target.site, target.audience.name, added=dict(part))
            else:
                await self.store.apply(
                    target.site, target.audience.name, removed=[h for h, _ in part]
                )
        return None

    async def _call(
        self, method: str, path: str, target: Target, form: dict[str, str]
    ) -> SendResult:
        assert self.graph is not None  # never called in dry run
        if not target.access_token:
            return local_result("no access token: set audiences_access_token", Outcome.BLOCKED)
        attempt = 0
        while True:
            attempt += 1
            result = await self.graph.call(
                method,
                path,
                access_token=target.access_token,
                app_secret=target.app_secret,
                form=form,
            )
            if result.outcome not in _RETRYABLE or attempt >= _ATTEMPTS:
                return result
            await asyncio.sleep(
                self.policy.delay(
                    attempt,
                    throttled=result.outcome is Outcome.THROTTLED,
                    retry_after=result.retry_after,
                )
            )
