"""Docs cannot drift: every setting is in the README, and CI runs the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    table = README.split("| key | flag | default | meaning |", 1)[1].split("\n\n", 1)[0]
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", table, flags=re.MULTILINE))
    assert set(Settings.model_fields) - documented == set()
    assert documented - set(Settings.model_fields) == set()


def test_readme_opens_with_run_and_test_commands_and_ci_runs_the_test_one() -> None:
    blocks = re.findall(r"```sh\n(.*?)\n```", README, flags=re.DOTALL)
    run, test = blocks[0], blocks[1]
    assert "pip install" in run and "capi-gateway demo" in run
    assert "pip install -e '.[test]'" in test and "pytest" in test
    ci = (ROOT / ".ci" / "run").read_text()
    assert test in ci.splitlines()
    # The two commands come before anything else in the README.
    assert README.index(run) < README.index("A self-hosted gateway")


def test_changelog_has_unreleased_section() -> None:
    assert "## Unreleased" in (ROOT / "CHANGELOG.md").read_text()
