"""The Markov chain's removal effects on paths, against chains solved by hand."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.pipeline import markov
from gateway.pipeline.markov import path_removal_effects


def test_linear_chain_by_hand() -> None:
    """Paths A→B→conv, A→null, B→conv, A→null.

    start→A 3/4, start→B 1/4; A→B 1/3, A→null 2/3; B→conv 1. P(conv) = 1/4 + 1/4 = 1/2.
    RE(A) = 1 - (1/4)/(1/2) = 1/2 (only start→B→conv is left); RE(B) = 1 (nothing is).
    """
    paths = [(("A", "B"), True), (("A",), False), (("B",), True), (("A",), False)]
    assert path_removal_effects(paths) == pytest.approx({"A": 0.5, "B": 1.0})


def test_repeats_of_one_key_are_one_state_visit() -> None:
    once = [(("A", "B"), True), (("A",), False), (("B",), True)]
    repeated = [(("A", "A", "B", "B"), True), (("A", "A", "A"), False), (("B",), True)]
    assert path_removal_effects(repeated) == pytest.approx(path_removal_effects(once))


def test_cycle_by_hand() -> None:
    """Paths A→B→A→conv, B→null, A→conv.

    start→A 2/3, start→B 1/3; A→B 1/3, A→conv 2/3; B→A 1/2, B→null 1/2.
    p(A) = 4/5, p(B) = 2/5, P(conv) = 2/3. N = (I - Q)^-1 = [[6/5, 2/5], [3/5, 6/5]];
    sᵀN = (1, 2/3), so h(A) = 1/(6/5) = 5/6 and h(B) = (2/3)/(6/5) = 5/9;
    RE(A) = 5/6·4/5/(2/3) = 1, RE(B) = 5/9·2/5/(2/3) = 1/3 (directly: without B,
    p(A) = 2/3 and P = 4/9, 1 - (4/9)/(2/3) = 1/3).
    """
    paths = [(("A", "B", "A"), True), (("B",), False), (("A",), True)]
    assert path_removal_effects(paths) == pytest.approx({"A": 1.0, "B": 1 / 3})


def test_conversions_without_a_touch_dilute_no_ratio() -> None:
    paths = [(("A", "B"), True), (("A",), False), (("B",), True), (("A",), False)]
    effects = path_removal_effects(paths)
    diluted = path_removal_effects([*paths, ((), True), ((), True)])
    assert diluted["A"] / diluted["B"] == pytest.approx(effects["A"] / effects["B"])
    assert diluted["B"] < effects["B"]


def test_nothing_converts_or_nothing_at_all() -> None:
    assert path_removal_effects([(("A", "B"), False)]) == {"A": 0.0, "B": 0.0}
    assert path_removal_effects([]) == {}
    assert path_removal_effects([((), True)]) == {}


def test_keys_beyond_max_states_share_one_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """With room for 3 states, A and B (seen most) keep theirs; C and D share the third.

    Paths A→B→conv, A→null, B→conv, A→A→null, C→conv, D→null: start→A 3/6, start→B 1/6,
    start→(C|D) 2/6; A→B 1/3; B→conv 1; (C|D)→conv 1/2.
    P(conv) = 3/6·1/3 + 1/6 + 2/6·1/2 = 1/2; removing (C|D) loses 2/6·1/2 = 1/6: RE = 1/3.
    Without A: 1/6 + 1/6 = 1/3 left, RE(A) = 1/3; without B: 1/6 left, RE(B) = 2/3.
    """
    monkeypatch.setattr(markov, "MAX_STATES", 3)
    paths = [
        (("A", "B"), True),
        (("A",), False),
        (("B",), True),
        (("A", "A"), False),
        (("C",), True),
        (("D",), False),
    ]
    effects = path_removal_effects(paths)
    assert effects == pytest.approx({"A": 1 / 3, "B": 2 / 3, "C": 1 / 3, "D": 1 / 3})


def _reference(paths: list[tuple[tuple[str, ...], bool]]) -> dict[str, float]:
    """RE(k) by the definition: build P from counts, solve p(conv) by plain fixed-point
    iteration with and without k, no fundamental matrix, no state cap."""
    counts: dict[str, dict[str, int]] = {}
    for keys, converted in paths:
        previous = "(start)"
        for key in keys:
            if key != previous:
                counts.setdefault(previous, {}).setdefault(key, 0)
                counts[previous][key] += 1
                previous = key
        end = "(conv)" if converted else "(null)"
        counts.setdefault(previous, {}).setdefault(end, 0)
        counts[previous][end] += 1
    states = sorted({k for keys, _ in paths for k in keys})

    def p_conv(removed: str | None) -> float:
        p = dict.fromkeys(states, 0.0)
        p["(conv)"], p["(null)"] = 1.0, 0.0
        for _ in range(100_000):
            moved = 0.0
            for s in states:
                if s == removed:
                    continue
                out = counts.get(s, {})
                total = sum(out.values())
                value = sum(n / total * p[t] for t, n in out.items()) if total else 0.0
                moved, p[s] = max(moved, abs(value - p[s])), value
            if moved < 1e-15:
                break
        out = counts.get("(start)", {})
        total = sum(out.values())
        return sum(n / total * p[t] for t, n in out.items() if t != removed) if total else 0.0

    base = p_conv(None)
    return {k: (1 - p_conv(k) / base if base > 0 else 0.0) for k in states}


_paths = st.lists(
    st.tuples(
        st.lists(st.sampled_from("ABCDE"), max_size=6).map(tuple),
        st.booleans(),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=120, deadline=None)
@given(paths=_paths)
def test_matches_the_definition_on_random_chains(
    paths: list[tuple[tuple[str, ...], bool]],
) -> None:
    assert path_removal_effects(paths) == pytest.approx(_reference(paths), abs=1e-9)
