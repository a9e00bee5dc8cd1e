"""Docs cannot drift: the settings table is generated, and CI runs the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from gateway import reference
from gateway.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_settings_reference_is_generated_from_the_model() -> None:
    try:
        fresh = reference.render_block()
    except reference.ReferenceProblem as exc:
        pytest.fail(str(exc))
    current = reference.current_block(README)
    assert current is not None, "README.md lost the settings reference markers"
    # Not a bare `assert ==`: the message says how to fix it.
    if current != fresh:
        pytest.fail(
            "README.md's settings table is out of date with gateway/settings.py: run "
            "`.venv/bin/python -m gateway.reference --write`"
        )
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", current, flags=re.MULTILINE))
    assert documented == set(Settings.model_fields)


def test_reference_rows_read_well() -> None:
    rows = {row[0].strip("`"): row for row in reference.rows()}
    assert rows["pixel_id"][1] == "`--pixel-id` (repeatable)"
    assert rows["events_api_keys"][1] == "`--api-key` (repeatable)"
    assert rows["app_secret"][1] == "env `META_APP_SECRET`"
    assert rows["max_body_bytes"][1] == "—"
    assert rows["retention"][2] == "`7d`"
    assert rows["send_timeout"][2] == "`1.5s`"
    assert rows["blocked_probe_interval"][2] == "`15m`"
    assert rows["trusted_proxies"][2] == "`127.0.0.0/8, ::1/128`"
    assert rows["dry_run"][2] == "`false`"
    assert rows["upstream"][2] == "none"
    # A docstring spanning lines is one table cell.
    assert "\n" not in rows["browser_pixel"][3] and rows["browser_pixel"][3].startswith("`hook`")


def test_reference_refuses_an_undocumented_setting() -> None:
    class Model(BaseModel):
        documented: int = 1
        """what it does"""
        forgotten: int = 2

    with pytest.raises(reference.ReferenceProblem, match="forgotten"):
        reference.rows(Model)


def test_reference_write_replaces_only_the_marked_block(tmp_path: Path) -> None:
    stale = f"# Title\n\nbefore\n\n{reference.START}\n| key |\n{reference.END}\n\nafter\n"
    readme = tmp_path / "README.md"
    readme.write_text(stale)
    assert reference.main(["--write", "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# Title\n\nbefore\n\n") and text.endswith("\n\nafter\n")
    assert reference.current_block(text) == reference.render_block()
    assert reference.write(readme) is False


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0"), (1.5, "1.5s"), (10, "10s"), (60, "1m"), (90, "90s"), (14400, "4h"), (604800, "7d")],
)
def test_durations_in_the_reference(seconds: float, text: str) -> None:
    assert reference.format_duration(seconds) == text


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
