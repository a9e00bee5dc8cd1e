"""Settings: env < TOML file < flags, env names, value checks and the derived views."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Sources, load_settings
from gateway.edge.appkeys import Runtime
from gateway.pipeline.events import Prepared, prepare
from gateway.settings import (
    ConfigError,
    Settings,
    decode_key,
    parse_duration,
    split_host_port,
)

PIXEL_A = "111111111111111"
PIXEL_B = "222222222222222"
KEY = bytes(range(32))


def load(
    tmp_path: Path,
    env: dict[str, str] | None = None,
    toml: str | bytes | None = None,
    flags: dict[str, Any] | None = None,
) -> Settings:
    """Settings from exactly these layers (never the test process's own environment)."""
    config_file = None
    if toml is not None:
        config_file = tmp_path / "gateway.toml"
        if isinstance(toml, bytes):
            config_file.write_bytes(toml)
        else:
            config_file.write_text(toml)
    return load_settings(Sources(config_file=config_file, environ=env or {}, flags=flags))


def config_error(tmp_path: Path, **layers: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, **layers)
    message = str(info.value)
    assert "\n" not in message, "config errors are printed as one line"
    return message


# precedence -----------------------------------------------------------------------


# (settings key, env var, env value, TOML line, file value, flag value, attribute check)
PRECEDENCE = [
    (
        "listen",
        "CAPIGW_LISTEN",
        "127.0.0.1:1001",
        'listen = "127.0.0.1:1002"',
        "127.0.0.1:1002",
        "127.0.0.1:1003",
    ),
    (
        "access_token",
        "META_ACCESS_TOKEN",
        "env-token",
        'access_token = "file-token"',
        "file-token",
        "flag-token",
    ),
    ("graph_version", "CAPIGW_GRAPH_VERSION", "v20.0", 'graph_version = "v21.0"', "v21.0", "v22.0"),
    (
        "test_event_code",
        "META_TEST_EVENT_CODE",
        "TEST1",
        'test_event_code = "TEST2"',
        "TEST2",
        "TEST3",
    ),
    ("log_level", "CAPIGW_LOG_LEVEL", "debug", 'log_level = "warning"', "warning", "error"),
]


@pytest.mark.parametrize(
    ("key", "env_name", "env_value", "toml_line", "file_value", "flag_value"), PRECEDENCE
)
def test_each_layer_overrides_the_one_below(
    tmp_path: Path,
    key: str,
    env_name: str,
    env_value: str,
    toml_line: str,
    file_value: str,
    flag_value: str,
) -> None:
    env = {env_name: env_value}
    assert getattr(load(tmp_path, env=env), key) == env_value
    assert getattr(load(tmp_path, env=env, toml=toml_line), key) == file_value
    assert (
        getattr(load(tmp_path, env=env, toml=toml_line, flags={key: flag_value}), key) == flag_value
    )
    # A flag also wins over the file alone, and over the environment alone.
    assert getattr(load(tmp_path, toml=toml_line, flags={key: flag_value}), key) == flag_value
    assert getattr(load(tmp_path, env=env, flags={key: flag_value}), key) == flag_value


def test_precedence_is_per_key(tmp_path: Path) -> None:
    env = {
        "META_PIXEL_ID": PIXEL_A,
        "META_ACCESS_TOKEN": "env-token",
        "CAPIGW_LISTEN": "127.0.0.1:1001",
        "CAPIGW_WORKERS": "3",
    }
    toml = 'listen = "127.0.0.1:1002"\nworkers = 2\n'
    settings = load(tmp_path, env=env, toml=toml, flags={"workers": 5})
    # Each key comes from the highest layer that sets it; the others keep lower values.
    assert settings.workers == 5
    assert settings.listen == "127.0.0.1:1002"
    assert settings.access_token == "env-token"
    assert settings.pixel_id == [PIXEL_A]


def test_flags_left_unset_do_not_override(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        env={"CAPIGW_LISTEN": "127.0.0.1:1001"},
        flags={"listen": None, "dry_run": None},
    )
    assert settings.listen == "127.0.0.1:1001"
    assert settings.dry_run is False


def test_file_pixel_ids_replace_env_pixel_ids(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        env={"META_PIXEL_ID": PIXEL_A, "META_ACCESS_TOKEN": "t"},
        toml=f'pixel_id = "{PIXEL_B}"',
    )
    assert [p.id for p in settings.effective_pixels()] == [PIXEL_B]


def test_defaults_without_any_source(tmp_path: Path) -> None:
    settings = load(tmp_path)
    assert settings.listen == "127.0.0.1:8080"
    assert settings.graph_url == "https://graph.facebook.com"
    assert settings.prefix == "/_capi"
    assert settings.pixel_id == []
    assert settings.access_token is None
    assert settings.dry_run is False


# environment ------------------------------------------------------------------------


def test_meta_env_names_map_to_settings(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        env={
            "META_PIXEL_ID": PIXEL_A,
            "META_ACCESS_TOKEN": "EAAB-token",
            "META_TEST_EVENT_CODE": "TEST123",
            "META_APP_SECRET": "app-secret",
        },
    )
    assert settings.pixel_id == [PIXEL_A]
    assert settings.access_token == "EAAB-token"
    assert settings.test_event_code == "TEST123"
    assert settings.app_secret == "app-secret"
    (pixel,) = settings.effective_pixels()
    assert (pixel.id, pixel.access_token, pixel.test_event_code, pixel.app_secret) == (
        PIXEL_A,
        "EAAB-token",
        "TEST123",
        "app-secret",
    )


def test_empty_meta_env_values_count_as_unset(tmp_path: Path) -> None:
    settings = load(tmp_path, env={"META_ACCESS_TOKEN": "", "META_PIXEL_ID": ""})
    assert settings.access_token is None
    assert settings.pixel_id == []


def test_unrelated_env_vars_are_ignored(tmp_path: Path) -> None:
    settings = load(tmp_path, env={"PATH": "/usr/bin", "META_SOMETHING_ELSE": "x"})
    assert settings.pixel_id == []


def test_capigw_env_sets_scalars(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        env={
            "CAPIGW_WORKERS": "4",
            "CAPIGW_DRY_RUN": "true",
            "CAPIGW_LOG_LEVEL": "DEBUG",
            "CAPIGW_BUFFER": str(tmp_path / "box.db"),
            "CAPIGW_UPSTREAM": "http://127.0.0.1:3000/",
            "CAPIGW_GRAPH_URL": "http://127.0.0.1:9999/",
            "CAPIGW_MAX_BODY_BYTES": "2048",
            "CAPIGW_DEFAULT_COUNTRY": "DE",
            "CAPIGW_PREFIX": "gw/",
            "CAPIGW_RETENTION": "2d",
        },
    )
    assert settings.workers == 4
    assert settings.dry_run is True
    assert settings.log_level == "debug"
    assert settings.buffer == tmp_path / "box.db"
    assert settings.upstream == "http://127.0.0.1:3000"
    assert settings.graph_url == "http://127.0.0.1:9999"
    assert settings.max_body_bytes == 2048
    assert settings.default_country == "de"
    assert settings.prefix == "/gw"
    assert settings.retention == 2 * 86400.0


def test_capigw_pixel_id_overrides_meta_pixel_id(tmp_path: Path) -> None:
    settings = load(tmp_path, env={"META_PIXEL_ID": PIXEL_A, "CAPIGW_PIXEL_ID": PIXEL_B})
    assert settings.pixel_id == [PIXEL_B]


def test_capigw_pixels_as_json(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        env={"CAPIGW_PIXELS": f'[{{"id": "{PIXEL_A}", "access_token": "tok-a"}}]'},
    )
    assert [(p.id, p.access_token) for p in settings.effective_pixels()] == [(PIXEL_A, "tok-a")]


def test_capigw_pixels_with_bad_json_names_the_variable(tmp_path: Path) -> None:
    message = config_error(tmp_path, env={"CAPIGW_PIXELS": "[{not json"})
    assert "CAPIGW_PIXELS" in message
    assert "JSON" in message


def test_unknown_capigw_variable_names_it(tmp_path: Path) -> None:
    message = config_error(tmp_path, env={"CAPIGW_LISTN": "127.0.0.1:1"})
    assert "CAPIGW_LISTN" in message
    assert "unknown setting" in message
    assert "did you mean `CAPIGW_LISTEN`?" in message


def test_capigw_config_names_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "from-env.toml"
    path.write_text('listen = "127.0.0.1:1234"\n')
    settings = load_settings(Sources(environ={"CAPIGW_CONFIG": str(path)}))
    assert settings.listen == "127.0.0.1:1234"


def test_capigw_config_file_still_overrides_env(tmp_path: Path) -> None:
    path = tmp_path / "from-env.toml"
    path.write_text('listen = "127.0.0.1:1234"\n')
    settings = load_settings(
        Sources(environ={"CAPIGW_CONFIG": str(path), "CAPIGW_LISTEN": "127.0.0.1:1"})
    )
    assert settings.listen == "127.0.0.1:1234"


def test_explicit_config_file_wins_over_capigw_config(tmp_path: Path) -> None:
    (tmp_path / "env.toml").write_text('listen = "127.0.0.1:1111"\n')
    (tmp_path / "flag.toml").write_text('listen = "127.0.0.1:2222"\n')
    settings = load_settings(
        Sources(
            config_file=tmp_path / "flag.toml",
            environ={"CAPIGW_CONFIG": str(tmp_path / "env.toml")},
        )
    )
    assert settings.listen == "127.0.0.1:2222"


def test_capigw_config_naming_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"absent\.toml"):
        load_settings(Sources(environ={"CAPIGW_CONFIG": str(tmp_path / "absent.toml")}))


def test_empty_capigw_value_counts_as_unset(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        env={"CAPIGW_UPSTREAM": "", "CAPIGW_TEST_EVENT_CODE": " ", "CAPIGW_DRY_RUN": ""},
    )
    assert settings.upstream is None
    assert settings.test_event_code is None
    assert settings.dry_run is False


def test_the_test_suites_own_variables_do_not_stop_the_gateway(tmp_path: Path) -> None:
    # Exported for a test run, they must not make `serve` or `demo` refuse to start.
    env = {"CAPIGW_TEST_POSTGRES": "postgresql://x@127.0.0.1/db", "CAPIGW_SKIP_BROWSER": "1"}
    assert load(tmp_path, env=env).upstream is None
    with pytest.raises(ConfigError, match="CAPIGW_TEST_POSTGRE: unknown setting"):
        load(tmp_path, env={"CAPIGW_TEST_POSTGRE": "x"})


def test_empty_capigw_value_does_not_hide_a_lower_layer(tmp_path: Path) -> None:
    settings = load(tmp_path, env={"CAPIGW_LISTEN": ""}, toml='listen = "127.0.0.1:4000"')
    assert settings.listen == "127.0.0.1:4000"


# durations --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("7d", 7 * 86400.0),
        ("90s", 90.0),
        ("15m", 900.0),
        ("1.5h", 5400.0),
        ("500ms", 0.5),
        (" 30 s ", 30.0),
        ("45", 45.0),
        (90, 90.0),
        (2.5, 2.5),
        (0, 0.0),
    ],
)
def test_durations(value: Any, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["-5s", "7 days", "5w", "", "s", True, None, [1], -1])
def test_bad_durations(value: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


def test_duration_keys_accept_strings_and_numbers(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        env={"CAPIGW_DEAD_RETENTION": "30d"},
        toml='retention = "7d"\nlease = 90\nsend_timeout = "1500ms"\nretry_cap = "15m"\n',
    )
    assert settings.retention == 7 * 86400.0
    assert settings.dead_retention == 30 * 86400.0
    assert settings.lease == 90.0
    assert settings.send_timeout == pytest.approx(1.5)
    assert settings.retry_cap == 900.0


def test_bad_duration_names_the_key_and_source(tmp_path: Path) -> None:
    message = config_error(tmp_path, toml='retention = "a week"')
    assert "retention" in message
    assert "gateway.toml" in message
    assert "7d" in message  # the fix: an example of the format


# lists and pixels ---------------------------------------------------------------


def test_comma_separated_pixel_ids_give_one_pixel_each(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        env={"META_PIXEL_ID": f"{PIXEL_A}, {PIXEL_B},", "META_ACCESS_TOKEN": "tok"},
    )
    assert settings.pixel_id == [PIXEL_A, PIXEL_B]
    assert [(p.id, p.access_token) for p in settings.effective_pixels()] == [
        (PIXEL_A, "tok"),
        (PIXEL_B, "tok"),
    ]


def test_an_event_goes_to_every_configured_pixel(tmp_path: Path) -> None:
    settings = load(
        tmp_path, env={"META_PIXEL_ID": f"{PIXEL_A},{PIXEL_B}", "META_ACCESS_TOKEN": "tok"}
    )
    ctx = Runtime.from_settings(settings).context
    event = {
        "event_name": "Purchase",
        "event_time": int(time.time()),
        "event_source_url": "https://shop.example/thanks",
        "user_data": {
            "email": "jane@example.com",
            "client_ip_address": "203.0.113.7",
            "client_user_agent": "Mozilla/5.0",
        },
        "custom_data": {"value": 10, "currency": "EUR"},
    }
    result = prepare([event], ctx)
    assert isinstance(result, Prepared)
    assert sorted(row.pixel_id for row in result.rows) == [PIXEL_A, PIXEL_B]
    assert len({row.event_id for row in result.rows}) == 1


def test_comma_separated_events_api_keys(tmp_path: Path) -> None:
    settings = load(tmp_path, env={"CAPIGW_EVENTS_API_KEYS": "key-one, key-two"})
    assert settings.events_api_keys == ["key-one", "key-two"]


def test_numeric_pixel_id_in_toml(tmp_path: Path) -> None:
    settings = load(tmp_path, toml=f"pixel_id = {PIXEL_A}")
    assert settings.pixel_id == [PIXEL_A]


def test_list_of_numeric_pixel_ids_in_toml(tmp_path: Path) -> None:
    settings = load(tmp_path, toml=f"pixel_id = [{PIXEL_A}, {PIXEL_B}]")
    assert settings.pixel_id == [PIXEL_A, PIXEL_B]


def test_boolean_in_pixel_id_list_is_refused(tmp_path: Path) -> None:
    message = config_error(tmp_path, toml=f"pixel_id = [{PIXEL_A}, true]")
    assert "pixel_id" in message


def test_pixels_tables_with_per_pixel_credentials(tmp_path: Path) -> None:
    toml = f"""
access_token = "top-token"
test_event_code = "TOP"
app_secret = "top-secret"

[[pixels]]
id = "{PIXEL_A}"
access_token = "pixel-a-token"
test_event_code = "TEST_A"

[[pixels]]
id = {PIXEL_B}
"""
    settings = load(tmp_path, toml=toml)
    pixels = {p.id: p for p in settings.effective_pixels()}
    assert set(pixels) == {PIXEL_A, PIXEL_B}
    assert pixels[PIXEL_A].access_token == "pixel-a-token"
    assert pixels[PIXEL_A].test_event_code == "TEST_A"
    assert pixels[PIXEL_A].app_secret == "top-secret"
    assert pixels[PIXEL_B].access_token == "top-token"
    assert pixels[PIXEL_B].test_event_code == "TOP"
    settings.check_ready_to_send()


def test_pixels_table_token_overrides_env_token(tmp_path: Path) -> None:
    toml = f'[[pixels]]\nid = "{PIXEL_A}"\naccess_token = "file-pixel-token"\n'
    settings = load(
        tmp_path, env={"META_ACCESS_TOKEN": "env-token", "META_PIXEL_ID": PIXEL_B}, toml=toml
    )
    pixels = {p.id: p.access_token for p in settings.effective_pixels()}
    assert pixels == {PIXEL_B: "env-token", PIXEL_A: "file-pixel-token"}


def test_pixels_table_entry_replaces_the_same_top_level_pixel(tmp_path: Path) -> None:
    toml = f'pixel_id = "{PIXEL_A}"\n[[pixels]]\nid = "{PIXEL_A}"\naccess_token = "own"\n'
    settings = load(tmp_path, env={"META_ACCESS_TOKEN": "shared"}, toml=toml)
    assert [(p.id, p.access_token) for p in settings.effective_pixels()] == [(PIXEL_A, "own")]


def test_pixel_listed_twice_in_tables_is_refused(tmp_path: Path) -> None:
    toml = f'[[pixels]]\nid = "{PIXEL_A}"\n[[pixels]]\nid = "{PIXEL_A}"\n'
    message = config_error(tmp_path, toml=toml)
    assert "pixels" in message
    assert "twice" in message


def test_unknown_key_in_pixels_table(tmp_path: Path) -> None:
    toml = f'[[pixels]]\nid = "{PIXEL_A}"\naccess_tokn = "x"\n'
    message = config_error(tmp_path, toml=toml)
    assert "access_tokn" in message
    assert "gateway.toml" in message


def test_gateway_table_form(tmp_path: Path) -> None:
    toml = f"""
[gateway]
listen = "127.0.0.1:9000"
pixel_id = "{PIXEL_A}"
access_token = "tok"
retention = "3d"

[[pixels]]
id = "{PIXEL_B}"
"""
    settings = load(tmp_path, toml=toml)
    assert settings.listen == "127.0.0.1:9000"
    assert settings.retention == 3 * 86400.0
    assert [(p.id, p.access_token) for p in settings.effective_pixels()] == [
        (PIXEL_A, "tok"),
        (PIXEL_B, "tok"),
    ]


def test_gateway_table_and_top_level_keys_give_the_same_settings(tmp_path: Path) -> None:
    body = 'listen = "127.0.0.1:9000"\nworkers = 2\n'
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    top = load(tmp_path / "a", toml=body)
    table = load(tmp_path / "b", toml="[gateway]\n" + body)
    assert top == table


# errors naming the key and the source -----------------------------------------------


def test_unknown_key_in_file_names_key_and_file(tmp_path: Path) -> None:
    message = config_error(tmp_path, toml='listn = "127.0.0.1:1"')
    assert "listn" in message
    assert str(tmp_path / "gateway.toml") in message
    assert "unknown setting" in message


def test_unknown_key_in_gateway_table_names_key_and_file(tmp_path: Path) -> None:
    message = config_error(tmp_path, toml="[gateway]\nworkerz = 2\n")
    assert "workerz" in message
    assert "gateway.toml" in message


def test_unknown_table_in_file_names_it(tmp_path: Path) -> None:
    message = config_error(tmp_path, toml="[sender]\nbatch_size = 10\n")
    assert "sender" in message
    assert "gateway.toml" in message


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(Sources(config_file=tmp_path / "nope.toml", environ={}))
    message = str(info.value)
    assert "nope.toml" in message
    assert "--config" in message


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    message = config_error(tmp_path, toml='listen = "127.0.0.1:1\n')
    assert "gateway.toml" in message
    assert "not valid TOML" in message
    assert "line 1" in message


def test_config_path_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(Sources(config_file=tmp_path, environ={}))
    message = str(info.value)
    assert str(tmp_path) in message
    assert "cannot read" in message


def test_config_file_not_utf8(tmp_path: Path) -> None:
    message = config_error(tmp_path, toml=b'upstream = "\xff"\n')
    assert "gateway.toml" in message
    assert "UTF-8" in message


@pytest.mark.parametrize(
    ("key", "env_name", "value", "hint"),
    [
        ("listen", "CAPIGW_LISTEN", "8080", "HOST:PORT"),
        ("listen", "CAPIGW_LISTEN", "127.0.0.1:70000", "HOST:PORT"),
        ("listen", "CAPIGW_LISTEN", "::1:8080", "HOST:PORT"),
        ("graph_version", "CAPIGW_GRAPH_VERSION", "26.0", "v26.0"),
        ("graph_version", "CAPIGW_GRAPH_VERSION", "v26", "v26.0"),
        ("upstream", "CAPIGW_UPSTREAM", "ftp://example.com", "http"),
        ("upstream", "CAPIGW_UPSTREAM", "example.com", "http"),
        ("graph_url", "CAPIGW_GRAPH_URL", "graph.facebook.com", "http"),
        ("pixel_id", "META_PIXEL_ID", "my-pixel", "numeric"),
        ("pixel_id", "META_PIXEL_ID", f"{PIXEL_A},12ab", "numeric"),
        ("pixel_id", "META_PIXEL_ID", "1234", "numeric"),
        ("encryption_key", "CAPIGW_ENCRYPTION_KEY", "abcd", "32 bytes"),
        ("encryption_key", "CAPIGW_ENCRYPTION_KEY", KEY.hex()[:-2], "32 bytes"),
        ("default_country", "CAPIGW_DEFAULT_COUNTRY", "usa", "2-letter"),
        ("default_country", "CAPIGW_DEFAULT_COUNTRY", "u1", "2-letter"),
        ("prefix", "CAPIGW_PREFIX", "/", "prefix"),
        ("log_level", "CAPIGW_LOG_LEVEL", "verbose", "debug"),
        ("workers", "CAPIGW_WORKERS", "many", "integer"),
        ("workers", "CAPIGW_WORKERS", "0", "1"),
    ],
)
def test_bad_env_value_names_the_key(
    tmp_path: Path, key: str, env_name: str, value: str, hint: str
) -> None:
    message = config_error(tmp_path, env={env_name: value})
    assert key in message
    assert "environment" in message
    assert hint in message


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('listen = "localhost"', "listen"),
        ('graph_version = "latest"', "graph_version"),
        ('upstream = "localhost:3000"', "upstream"),
        ('pixel_id = "abc"', "pixel_id"),
        ('[[pixels]]\nid = "abc"\n', "pixels.0.id"),
        ('encryption_key = "too-short"', "encryption_key"),
        ('default_country = "Germany"', "default_country"),
        ("batch_size = 5000", "batch_size"),
    ],
)
def test_bad_file_value_names_the_key_and_file(tmp_path: Path, toml: str, key: str) -> None:
    message = config_error(tmp_path, toml=toml)
    assert key in message
    assert "gateway.toml" in message


@pytest.mark.parametrize(
    ("flags", "key"),
    [
        ({"listen": "nowhere"}, "listen"),
        ({"graph_version": "26"}, "graph_version"),
        ({"pixel_id": ["abc"]}, "pixel_id"),
        ({"upstream": "site"}, "upstream"),
    ],
)
def test_bad_flag_value_names_the_key(tmp_path: Path, flags: dict[str, Any], key: str) -> None:
    message = config_error(tmp_path, flags=flags)
    assert key in message
    assert "command line" in message


def test_bad_values_never_echo_the_access_token(tmp_path: Path) -> None:
    message = config_error(
        tmp_path, env={"META_ACCESS_TOKEN": "EAAB-super-secret", "CAPIGW_LISTEN": "x"}
    )
    assert "EAAB-super-secret" not in message


def test_valid_encryption_key_is_accepted(tmp_path: Path) -> None:
    settings = load(tmp_path, env={"CAPIGW_ENCRYPTION_KEY": base64.b64encode(KEY).decode()})
    assert settings.encryption_key is not None
    assert decode_key(settings.encryption_key) == KEY


# ready to send ----------------------------------------------------------------------


def test_ready_to_send_needs_a_pixel(tmp_path: Path) -> None:
    settings = load(tmp_path, env={"META_ACCESS_TOKEN": "tok"})
    with pytest.raises(ConfigError) as info:
        settings.check_ready_to_send()
    assert "pixel_id" in str(info.value)
    assert "META_PIXEL_ID" in str(info.value)
    assert "--dry-run" in str(info.value)


def test_ready_to_send_needs_a_token(tmp_path: Path) -> None:
    settings = load(tmp_path, env={"META_PIXEL_ID": PIXEL_A})
    with pytest.raises(ConfigError) as info:
        settings.check_ready_to_send()
    message = str(info.value)
    assert "access_token" in message
    assert PIXEL_A in message
    assert "META_ACCESS_TOKEN" in message


def test_ready_to_send_needs_a_token_for_every_pixel(tmp_path: Path) -> None:
    toml = f'[[pixels]]\nid = "{PIXEL_A}"\naccess_token = "a"\n[[pixels]]\nid = "{PIXEL_B}"\n'
    settings = load(tmp_path, toml=toml)
    with pytest.raises(ConfigError, match=PIXEL_B):
        settings.check_ready_to_send()


def test_ready_to_send_with_pixel_and_token(tmp_path: Path) -> None:
    load(tmp_path, env={"META_PIXEL_ID": PIXEL_A, "META_ACCESS_TOKEN": "t"}).check_ready_to_send()


def test_dry_run_needs_no_token(tmp_path: Path) -> None:
    settings = load(tmp_path, env={"META_PIXEL_ID": PIXEL_A}, flags={"dry_run": True})
    settings.check_ready_to_send()
    assert [p.id for p in settings.effective_pixels()] == [PIXEL_A]


def test_dry_run_without_pixels_uses_a_placeholder_pixel(tmp_path: Path) -> None:
    settings = load(tmp_path, env={"CAPIGW_DRY_RUN": "1"})
    settings.check_ready_to_send()
    (pixel,) = settings.effective_pixels()
    assert pixel.id == "dry-run"
    assert pixel.access_token is None


def test_no_placeholder_pixel_outside_dry_run(tmp_path: Path) -> None:
    assert load(tmp_path).effective_pixels() == []


# split_host_port and decode_key -----------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("[::1]:8080", ("::1", 8080)),
        ("[::]:443", ("::", 443)),
        (":8080", ("0.0.0.0", 8080)),
        ("localhost:0", ("localhost", 0)),
        ("gateway.internal:65535", ("gateway.internal", 65535)),
        ("  0.0.0.0:80  ", ("0.0.0.0", 80)),
    ],
)
def test_split_host_port(listen: str, expected: tuple[str, int]) -> None:
    assert split_host_port(listen) == expected


@pytest.mark.parametrize(
    "listen",
    [
        "8080",
        "127.0.0.1",
        "127.0.0.1:",
        "::1:8080",
        "[::1]",
        "host:65536",
        "host:http",
        "a:b:1",
        "",
    ],
)
def test_split_host_port_refuses(listen: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        split_host_port(listen)


# A key whose base64 needs "+" and "/" (URL-safe: "-" and "_").
ODD_KEY = bytes([0xFB, 0xFF, 0xBF] * 10 + [0xFB, 0xFF])


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (KEY.hex(), KEY),
        (KEY.hex().upper(), KEY),
        (KEY.hex() + "\n", KEY),
        (base64.b64encode(KEY).decode(), KEY),
        (base64.b64encode(KEY).decode().rstrip("="), KEY),
        (base64.b64encode(ODD_KEY).decode(), ODD_KEY),
        (base64.urlsafe_b64encode(ODD_KEY).decode(), ODD_KEY),
        (base64.urlsafe_b64encode(ODD_KEY).decode().rstrip("="), ODD_KEY),
        ("  " + base64.b64encode(KEY).decode() + "\n", KEY),
    ],
)
def test_decode_key(text: str, key: bytes) -> None:
    assert decode_key(text) == key


def test_odd_key_exercises_both_base64_alphabets() -> None:
    assert "+" in base64.b64encode(ODD_KEY).decode()
    assert "/" in base64.b64encode(ODD_KEY).decode()
    assert "-" in base64.urlsafe_b64encode(ODD_KEY).decode()
    assert "_" in base64.urlsafe_b64encode(ODD_KEY).decode()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not a key",
        KEY.hex()[:-1],
        KEY.hex() + "00",
        base64.b64encode(KEY[:16]).decode(),
        base64.b64encode(KEY + b"x").decode(),
    ],
)
def test_decode_key_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        decode_key(text)
