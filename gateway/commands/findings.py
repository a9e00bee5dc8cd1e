"""What `doctor` and `send-test-event` report: findings, their levels and the exit code.

Exit codes (the CLI's contract, also in README.md): 0 no problem found; 1 problems found
(a line marked FAIL says which, with the fix); 2 the configuration does not load (as for
every command); 3 nothing wrong locally but the Graph API could not be reached.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_OFFLINE = 3


class Level(enum.Enum):
    """How much a finding matters; FAIL and OFFLINE decide the exit code."""

    OK = "ok"
    NOTE = "note"
    HINT = "hint"
    WARN = "WARN"
    FAIL = "FAIL"
    OFFLINE = "offline"


@dataclass(frozen=True, slots=True)
class Finding:
    """One line of the diagnosis and, for problems, what to do about it."""

    check: str
    level: Level
    message: str
    fix: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The JSON form of `doctor --json`."""
        out = asdict(self)
        out["level"] = self.level.value.lower()
        return out


def mask(pixel_id: str) -> str:
    """A pixel id as logs and command output show it."""
    return pixel_id[:4] + "****"


def exit_code(findings: Sequence[Finding]) -> int:
    """0 fine, 1 problems found, 3 offline (nothing else wrong)."""
    levels = {f.level for f in findings}
    if Level.FAIL in levels:
        return EXIT_PROBLEMS
    if Level.OFFLINE in levels:
        return EXIT_OFFLINE
    return EXIT_OK


def render(findings: Sequence[Finding]) -> str:
    """The findings as aligned lines, fixes indented below, and a verdict."""
    lines = []
    for f in findings:
        lines.append(f"{f.level.value:<8} {f.check:<8} {f.message}")
        if f.fix:
            lines.append(f"{'':<17} fix: {f.fix}")
    problems = sum(1 for f in findings if f.level is Level.FAIL)
    if problems:
        lines.append(f"{problems} problem(s) found.")
    elif any(f.level is Level.OFFLINE for f in findings):
        lines.append(
            "No problem found locally, but the Graph API could not be reached: the token "
            "and the clock are unverified."
        )
    else:
        lines.append("No problem found.")
    return "\n".join(lines)
