"""The data-driven model's Markov chain: journey paths in, each key's removal effect out.

A first-order chain (Anderl et al. 2016): states are start, the keys of one dimension
(channels, sources or campaigns), conversion and null; P(a → b) is the number of a → b steps
over all steps leaving a, on paths of every visitor, converting or not. With p(s) the
probability of reaching conversion from s (p(conv) = 1, p(null) = 0,
p(s) = Σ_b P(s → b) p(b)), P(conv) = p(start), and P_{-k}(conv) the same with k's
transitions sent to null, the removal effect is RE(k) = 1 - P_{-k}(conv) / P(conv).

It is computed exactly, not by simulation: a conversion that avoids k is unaffected by its
removal, so P_{-k}(conv) = P(conv) - h(k)·p(k) with h(k) the probability of ever reaching k
from start, and RE(k) = h(k)·p(k) / P(conv). With N = (I - Q)^-1 the fundamental matrix over
the key states (Q: their transitions among themselves), p = N·c (c: one-step conversion
probabilities) and h(k) = (sᵀN)_k / N_kk (s: start's transitions; the expected visits to k
over the expected visits once k is reached). One inversion, O(n³) for n states, so the
`MAX_STATES - 1` keys seen most often are states of their own and any others share one
state and its effect.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

# Its exact solution costs O(n³) in pure Python: ~70 ms for a dense chain of 120 states.
MAX_STATES = 120


def _build_chain(
    paths: list[tuple[tuple[str, ...], bool, int]],
) -> tuple[dict[str, int], int, list[list[float]], list[float], list[float], float]:
    """Index keys into states and count transitions (each path `count` times).

    The `MAX_STATES - 1` keys seen most often keep a state of their own; the rest share one
    last state. Gives (state of each key, number of states, Q = transient-to-transient
    probabilities, c = one-step conversion probabilities, s = start's transitions to the
    states, start's probability of converting in one step).
    """
    seen: defaultdict[str, int] = defaultdict(int)
    for keys, _, weight in paths:
        for key in keys:
            seen[key] += weight
    ranked = sorted(seen, key=lambda k: (-seen[k], k))
    own = ranked[: MAX_STATES - 1] if len(ranked) > MAX_STATES else ranked
    index = {key: i for i, key in enumerate(own)}
    n = len(own) + (1 if len(ranked) > len(own) else 0)
    for key in ranked[len(own) :]:
        index[key] = n - 1
    start = n  # the start state's row, after the transient ones
    counts = [[0] * n for _ in range(n + 1)]
    converted_counts = [0] * (n + 1)
    outs = [0] * (n + 1)
    for keys, converted, weight in paths:
        previous = start
        for key in keys:
            state = index[key]
            if state == previous:
                # A self-loop changes no absorption probability (p_i = Σ_{j≠i} P_ij p_j /
                # (1 - P_ii)) and no hitting probability: leaving it out keeps I - Q regular.
                continue
            counts[previous][state] += weight
            outs[previous] += weight
            previous = state
        if converted:
            converted_counts[previous] += weight
        outs[previous] += weight
    q = [[(x / outs[i] if outs[i] else 0.0) for x in counts[i]] for i in range(n)]
    c = [(converted_counts[i] / outs[i] if outs[i] else 0.0) for i in range(n)]
    s_out = outs[start]
    s = [(x / s_out if s_out else 0.0) for x in counts[start]]
    return index, n, q, c, s, (converted_counts[start] / s_out if s_out else 0.0)


def _inverse(matrix: list[list[float]]) -> list[list[float]]:
    """Gauss-Jordan in place, without pivoting: fine for I - Q of an absorbing chain (an
    M-matrix, weakly diagonally dominant by rows, regular because every state can reach an
    absorbing one)."""
    a = [row[:] for row in matrix]
    n = len(a)
    for k in range(n):
        row_k = a[k]
        pivot = row_k[k]
        row_k[k] = 1.0
        row_k = [x / pivot for x in row_k]
        a[k] = row_k
        for i in range(n):
            if i == k:
                continue
            row_i = a[i]
            factor = row_i[k]
            if factor == 0.0:
                continue
            row_i[k] = 0.0
            a[i] = [x - factor * y for x, y in zip(row_i, row_k, strict=True)]
    return a


def path_removal_effects(paths: Iterable[tuple[tuple[str, ...], bool]]) -> dict[str, float]:
    """RE(k) of every key on `paths` ((keys in time order, converted?) each); all 0 when
    nothing converts."""
    return counted_removal_effects((keys, converted, 1) for keys, converted in paths)


def counted_removal_effects(
    paths: Iterable[tuple[tuple[str, ...], bool, int]],
) -> dict[str, float]:
    """`path_removal_effects` of paths given once each with how many times they occur
    ((keys, converted?, count)): the same chain, hence exactly the same effects, as each
    path repeated `count` times (integer counts: every probability is the same quotient)."""
    index, n, q, c, s, start_converts = _build_chain(list(paths))
    if n == 0:
        return {}
    fundamental = _inverse(
        [[(1.0 if i == j else 0.0) - q[i][j] for j in range(n)] for i in range(n)]
    )
    p = [sum(x * y for x, y in zip(row, c, strict=True)) for row in fundamental]
    total = start_converts + sum(x * y for x, y in zip(s, p, strict=True))
    if total <= 0:
        return dict.fromkeys(index, 0.0)
    visits = [0.0] * n
    for i, weight in enumerate(s):
        if weight:
            row = fundamental[i]
            for j in range(n):
                visits[j] += weight * row[j]
    state_effect = [
        min(1.0, max(0.0, visits[k] / fundamental[k][k] * p[k] / total)) for k in range(n)
    ]
    return {key: state_effect[state] for key, state in index.items()}
