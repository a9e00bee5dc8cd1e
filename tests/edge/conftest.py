"""Fixtures for the edge tests: the gateway in-process in front of tests.fakes.upstream.

`site` is the recording upstream, `start` starts a gateway in front of it (call with
settings overrides, and `dual_stack=True` to be seen as `::ffff:127.0.0.1`; each gateway
gets its own outbox file) and `gw` is one started with
the defaults.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_settings
from tests.edge.rules_env import StartRules, rules_gateways
from tests.fakes.graph import FakeGraph
from tests.fakes.upstream import Front, Upstream, run_gateway, start_upstream

StartGateway = Callable[..., Awaitable[Front]]


@pytest.fixture
async def site() -> AsyncIterator[Upstream]:
    async with start_upstream() as upstream:
        yield upstream


@pytest.fixture
async def start(
    tmp_path: Path, fake_graph: FakeGraph, site: Upstream
) -> AsyncIterator[StartGateway]:
    """Start a gateway in front of `site`; call with settings overrides."""
    async with contextlib.AsyncExitStack() as stack:
        started = 0

        async def go(*, dual_stack: bool = False, **overrides: Any) -> Front:
            nonlocal started
            values: dict[str, Any] = {
                "upstream": site.url,
                "buffer": tmp_path / f"outbox-{started}.db",
            }
            values.update(overrides)
            started += 1
            settings = make_settings(tmp_path, fake_graph.url, **values)
            return await stack.enter_async_context(run_gateway(settings, dual_stack=dual_stack))

        yield go


@pytest.fixture
async def gw(start: StartGateway) -> Front:
    return await start()


@pytest.fixture
async def start_rules(tmp_path: Path, fake_graph: FakeGraph) -> AsyncIterator[StartRules]:
    """Start a site and the gateway with rules in front of it (see rules_env)."""
    async with rules_gateways(tmp_path, fake_graph) as go:
        yield go
