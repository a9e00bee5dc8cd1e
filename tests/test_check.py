"""`capi-gateway check` as a newcomer and a CI job run it: every problem, rules on their own."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.fakes.processes import ROOT
from tests.test_cli import PIXEL, TOKEN, run

EXAMPLES = ROOT / "rules"


def problems(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("capi-gateway: ")]


def test_rule_files_validate_without_a_pixel(tmp_path: Path) -> None:
    result = run(tmp_path, "check", "--rules", str(EXAMPLES))
    assert result.returncode == 0, result.stderr
    assert "rules OK: " in result.stdout
    assert "only the rule files were checked" in result.stdout


def test_a_token_without_a_pixel_is_still_a_config_problem(tmp_path: Path) -> None:
    result = run(tmp_path, "check", "--rules", str(EXAMPLES), META_ACCESS_TOKEN=TOKEN)
    assert result.returncode == 2
    assert any("pixel_id" in line for line in problems(result))
    assert "rules OK: " in result.stdout


def test_every_problem_of_config_and_rules_is_reported(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'pixel_id = "{PIXEL}"\naccess_tokn = "{TOKEN}"\nevents_api_key = ["k"]\nrules = "rules"\n'
    )
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "a.toml").write_text(
        '[[rule]]\nname = "a"\nevent = "Lead"\npaht = "/x"\n'
        '[[rule]]\nname = "b"\nevent = "Lead"\npath = "/y"\nmethod = "FETCH"\n'
    )
    (rules / "b.toml").write_text('[[rule]]\nname = "c"\nevent "Lead"\n')
    result = run(tmp_path, "check", "--config", str(config))
    assert result.returncode == 2
    lines = problems(result)
    assert lines == [
        "capi-gateway: config error: "
        f"{config}: access_tokn: unknown setting; did you mean `access_token`?",
        "capi-gateway: config error: "
        f"{config}: events_api_key: unknown setting; did you mean `events_api_keys`?",
        "capi-gateway: rule error: rules/a.toml: rule 'a': paht: unknown key; did you mean `path`?",
        "capi-gateway: rule error: rules/a.toml: rule 'b': method: unknown method 'FETCH'",
        "capi-gateway: rule error: rules/b.toml: TOML syntax error: Expected '=' after a key "
        "in a key/value pair (at line 3, column 7)",
        "capi-gateway: 5 problems found",
    ]
    assert TOKEN not in result.stdout + result.stderr


def test_a_standard_event_in_lower_case_is_refused_with_the_right_name(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "shop.toml").write_text(
        '[[rule]]\nname = "thanks"\nevent = "purchase"\npath = "/thank-you"\n'
        '[[rule]]\nname = "own"\nevent = "Purchased"\npath = "/own"\n'
    )
    result = run(tmp_path, "check", "--rules", "rules")
    assert result.returncode == 2
    (line,) = problems(result)
    assert line.startswith("capi-gateway: rule error: rules/shop.toml: rule 'thanks': event: ")
    assert "did you mean 'Purchase'?" in line
    # A custom event that is not a standard one in disguise stays allowed.
    (rules / "shop.toml").write_text('[[rule]]\nname = "own"\nevent = "Purchased"\n')
    assert run(tmp_path, "check", "--rules", "rules").returncode == 0


def test_an_empty_rules_directory_is_no_pass(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    result = run(tmp_path, "check", "--rules", "rules")
    assert result.returncode == 2
    assert problems(result) == [
        "capi-gateway: rule error: rules: no rule file (*.toml) in rules (the directory is "
        "empty): no rule will fire"
    ]
    assert "rules OK" not in result.stdout


def test_rule_files_with_a_wrong_extension_are_named(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "shop.tml").write_text((EXAMPLES / "shop.toml").read_text())
    result = run(tmp_path, "check", "--rules", "rules")
    assert result.returncode == 2
    assert "(it holds shop.tml)" in result.stderr
    assert "rules/shop.tml: not read: rule files must end in .toml (rename it to shop.toml)" in (
        result.stdout
    )
    # Beside good files it is a warning: the good ones still load.
    (rules / "leads.toml").write_text((EXAMPLES / "leads.toml").read_text())
    result = run(tmp_path, "check", "--rules", "rules")
    assert result.returncode == 0, result.stderr
    assert "warning: rules/shop.tml: not read" in result.stdout


def test_a_token_pasted_with_bearer_is_flagged_and_not_shown(tmp_path: Path) -> None:
    result = run(tmp_path, "check", META_PIXEL_ID=PIXEL, META_ACCESS_TOKEN=f"Bearer {TOKEN}")
    assert result.returncode == 2
    (line,) = problems(result)
    assert "access_token: starts with 'Bearer '" in line
    assert TOKEN not in result.stdout + result.stderr


def test_test_mode_is_a_warning(tmp_path: Path) -> None:
    result = run(
        tmp_path, "check", META_PIXEL_ID=PIXEL, META_ACCESS_TOKEN=TOKEN, META_TEST_EVENT_CODE="T1"
    )
    assert result.returncode == 0, result.stderr
    assert "warning: test_event_code is set for pixel(s) 1234****" in result.stdout
    assert "do not count for ads" in result.stdout


async def test_test_mode_is_said_at_start_up_and_in_status(tmp_path: Path) -> None:
    import asyncio
    import time

    import aiohttp

    from tests.fakes.processes import (
        clean_env,
        free_port,
        gateway_cmd,
        serve_args,
        spawn,
        stop_at_exit,
        tail,
    )

    port, log = free_port(), tmp_path / "serve.log"
    env = clean_env(
        META_PIXEL_ID=PIXEL,
        META_ACCESS_TOKEN=TOKEN,
        META_TEST_EVENT_CODE="TEST42",
        CAPIGW_GRAPH_URL=f"http://127.0.0.1:{free_port()}",
    )
    args = serve_args(port, tmp_path / "outbox.db", "--log-format", "text")
    with stop_at_exit() as procs:
        procs.append(spawn([*gateway_cmd(), *args], log, env=env))
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 20
            while True:
                try:
                    async with session.get(f"http://127.0.0.1:{port}/_capi/status") as resp:
                        status = await resp.json()
                        break
                except aiohttp.ClientConnectionError:
                    assert time.monotonic() < deadline, tail(log)
                    await asyncio.sleep(0.1)
    assert status["test_mode"] is True
    assert any("test_event_code is set for pixel(s) 1234****" in w for w in status["warnings"])
    assert "Test mode: test_event_code is set for pixel(s) 1234****" in log.read_text()
    assert TOKEN not in log.read_text()


def test_a_bad_channel_rule_is_an_error_without_a_config_ok_above_it(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'pixel_id = ["{PIXEL}"]\naccess_token = "{TOKEN}"\n\n'
        '[[insights.channels]]\nchannel = "X"\nmedium = "("\n'
    )
    result = run(tmp_path, "check", "--config", str(config))
    assert result.returncode == 2
    (line,) = problems(result)
    assert "insights.channels[0]: medium" in line
    assert "config OK" not in result.stdout
