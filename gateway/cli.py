"""`capi-gateway` command line: serve, check, rules, demo, queue, forget and report."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.commands.forget import add_forget_parser, run_forget_command
from gateway.config import Sources, load_settings
from gateway.insights.policy import check_channels
from gateway.pipeline.rulefile import RuleError
from gateway.pipeline.ruleload import load_rules
from gateway.pipeline.rules import RuleSet
from gateway.settings import ConfigError, Settings, buffer_arg

log = logging.getLogger("gateway.cli")

# flag dest -> settings key; flags left unset (None) do not override lower layers.
_FLAG_KEYS = {
    "upstream": "upstream",
    "listen": "listen",
    "pixel_id": "pixel_id",
    "access_token": "access_token",
    "test_event_code": "test_event_code",
    "graph_url": "graph_url",
    "graph_version": "graph_version",
    "buffer": "buffer",
    "rules": "rules",
    "dry_run": "dry_run",
    "workers": "workers",
    "api_key": "events_api_keys",
    "prefix": "prefix",
    "key_file": "key_file",
    "log_level": "log_level",
    "log_format": "log_format",
    "admin_token": "admin_token",
}


def _config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML config file (overrides env)")
    parser.add_argument("--upstream", help="the site to put the gateway in front of")
    parser.add_argument("--listen", help="HOST:PORT to listen on (default 127.0.0.1:8080)")
    parser.add_argument(
        "--pixel-id", action="append", help="Meta pixel (dataset) id; repeat for several"
    )
    parser.add_argument("--access-token", help="Conversions API access token")
    parser.add_argument("--test-event-code", help="send events as test events with this code")
    parser.add_argument("--graph-url", help="Graph API base URL")
    parser.add_argument("--graph-version", help="Graph API version, e.g. v26.0")
    parser.add_argument(
        "--buffer", type=buffer_arg, help="the store: a SQLite file or a postgresql:// URL"
    )
    parser.add_argument("--rules", type=Path, help="directory of rule files")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        default=None,
        help="queue and record events but never call Meta",
    )
    parser.add_argument("--workers", type=int, help="worker processes")
    parser.add_argument(
        "--api-key", action="append", help="events API key (Bearer); repeat for several"
    )
    parser.add_argument("--prefix", help="path prefix of the gateway's endpoints")
    parser.add_argument("--key-file", type=Path, help="file holding the outbox encryption key")
    parser.add_argument("--log-level", help="debug, info, warning or error")
    parser.add_argument("--log-format", help="auto, json or text")
    parser.add_argument(
        "--admin-token", help="Bearer token of /status, /metrics and /admin (else local only)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="capi-gateway",
        description="First-party gateway from a website to Meta's Conversions API.",
    )
    parser.add_argument("--version", action="version", version=f"capi-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    _config_flags(serve)
    check = sub.add_parser("check", help="validate the configuration and exit")
    _config_flags(check)
    check.add_argument("--front-config", type=Path, help="warn about rules this file misses")
    doctor = sub.add_parser(
        "doctor",
        help="check config, rules, buffer, token and clock; exit 0 ok, 1 problems, 3 offline",
    )
    _config_flags(doctor)
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.add_argument("--site", help="check this [[sites]] site: its settings and events")
    test_event = sub.add_parser(
        "send-test-event", help="send one PageView in test mode and print Meta's answer"
    )
    _config_flags(test_event)  # includes --test-event-code, which wins over the config
    from gateway.commands.rules import add_parser as add_rules_parser

    add_rules_parser(sub, _config_flags)
    from gateway.front.command import add_parser as add_front_parser

    add_front_parser(sub)
    demo = sub.add_parser(
        "demo", help="run an example shop with the gateway in front of it (dry run, offline)"
    )
    demo.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT of the gateway")
    demo.add_argument("--buffer", type=Path, default=Path("capi-gateway-demo.db"))
    demo.add_argument(
        "--rules", type=Path, help="rule files (default: the examples in the repository's rules/)"
    )

    add_forget_parser(sub)
    from gateway.commands.audiences import add_parser as add_audiences_parser

    add_audiences_parser(sub, buffer_arg)
    from gateway.commands.report import add_parser as add_report_parser

    add_report_parser(sub)
    from gateway.commands.catalog import add_parser as add_catalog_parser

    add_catalog_parser(sub)
    queue = sub.add_parser("queue", help="inspect and manage the outbox")
    qsub = queue.add_subparsers(dest="queue_command", required=True)
    for name, text in (
        ("stats", "counts per state and event name"),
        ("list", "events with their payload as sent"),
        ("retry", "send dead or blocked events again"),
        ("purge", "delete events"),
        ("export", "all matching events as JSON lines"),
    ):
        q = qsub.add_parser(name, help=text)
        q.add_argument(
            "--buffer", type=buffer_arg, help="the store: a SQLite file or a postgresql:// URL"
        )
        q.add_argument("--config", type=Path, help="TOML config file")
        q.add_argument("--key-file", type=Path, help="file holding the outbox encryption key")
        q.add_argument("--json", action="store_true", help="machine-readable output")
        q.add_argument("--site", help="only events of this [[sites]] site")
        if name != "stats":
            q.add_argument("--state", help="only rows in this state")
            q.add_argument("--event-name", help="only rows of this event name")
            q.add_argument("--pixel-id", help="only rows of this pixel")
            q.add_argument("--id", type=int, action="append", help="only this row id")
        if name in ("list", "export"):
            q.add_argument("--limit", type=int, default=50 if name == "list" else None)
            q.add_argument(
                "--reveal",
                action="store_true",
                help="decrypt and show the clear fields (IP, user agent, fbp, fbc)",
            )
        if name == "purge":
            q.add_argument(
                "--yes", action="store_true", help="confirm deleting dead, pending or blocked rows"
            )
    return parser


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run the server's event loop: uvloop when installed (the `uvloop` extra), else asyncio."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from env < --config file < flags."""
    flags: dict[str, Any] = {}
    for dest, key in _FLAG_KEYS.items():
        value = getattr(args, dest, None)
        if value is not None:
            flags[key] = value
    return load_settings(Sources(config_file=getattr(args, "config", None), flags=flags))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `capi-gateway` script."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "queue":
            from gateway.commands.queue import run_queue_command

            return run_queue_command(args)
        if args.command == "catalog":
            from gateway.commands.catalog import run_catalog_command

            return run_catalog_command(args)
        if args.command == "forget":
            return run_forget_command(args)
        if args.command == "audiences":
            from gateway.commands.audiences import run_audiences_command

            return run_audiences_command(args)
        if args.command == "report":
            from gateway.commands.report import run_report_command

            return run_report_command(args)
        if args.command == "demo":
            return _demo(args)
        if args.command == "check":
            from gateway.commands.check import run_check

            return run_check(args, settings_from_args)
        if args.command == "front-config":
            from gateway.front.command import run_front_config

            return run_front_config(args)
        settings = settings_from_args(args)
        if args.command == "doctor":
            from gateway.commands.doctor import run_doctor
            from gateway.commands.queue import check_site

            if args.site is None:
                return run_doctor(settings, as_json=args.json)
            check_site(settings, args.site)
            (site,) = (s for s in settings.site_list() if s.name == args.site)
            return run_doctor(site.settings, as_json=args.json, site=site.name)
        if args.command == "send-test-event":
            from gateway.commands.testevent import run_send_test_event

            return run_send_test_event(settings, args.test_event_code)
        if args.command == "rules":
            from gateway.commands.rules import run_rules_test

            return run_rules_test(args, settings)
        settings.check_ready_to_send()
        check_channels(settings)
        # Rule files are checked before anything starts (or forks): a typo is a clear
        # message and exit 2, not a crashing worker.
        rules = load_rules(settings.rules) if settings.rules is not None else None
        return _serve(args, settings, rules)
    except ConfigError as exc:
        _print_config_error(exc)
        return 2
    except RuleError as exc:
        print(f"capi-gateway: rule error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # Output piped into `head` and the like: stop quietly.
        sys.stderr.close()
        return 0


def _print_config_error(exc: ConfigError) -> None:
    for problem in exc.problems:
        print(f"capi-gateway: config error: {problem}", file=sys.stderr)


def _serve(args: argparse.Namespace, settings: Settings, rules: RuleSet | None) -> int:
    from gateway.app import serve
    from gateway.delivery.schema import SchemaError
    from gateway.listen import check_can_listen
    from gateway.log import setup_logging
    from gateway.workers import block_signals

    check_can_listen(settings.listen)  # before the outbox and its key are created
    # Held until serve() has its handlers: a SIGHUP or SIGTERM while starting is then
    # handled once ready instead of killing the process (SIGHUP's default action).
    block_signals()
    setup_logging(settings.log_level, settings.log_format)
    # What a worker forked later starts with: the last configuration and rules a SIGHUP
    # accepted (rule files that broke since then must not stop a replacement).
    current, current_rules = settings, rules

    def reload() -> Settings:
        fresh = settings_from_args(args)
        fresh.check_ready_to_send()
        return fresh

    def reload_parent() -> None:
        nonlocal current, current_rules
        fresh = reload()
        rules = load_rules(fresh.rules) if fresh.rules is not None else None
        for key in ("workers", "listen", "buffer", "store_url"):
            if getattr(fresh, key) != getattr(settings, key):
                log.warning("The new %s takes effect only after a restart.", key)
        current, current_rules = fresh, rules

    def work() -> int:
        try:
            run(serve(current, reload, current_rules))
        except ConfigError as exc:
            _print_config_error(exc)
            return 2
        except SchemaError as exc:
            print(f"capi-gateway: {exc}", file=sys.stderr)
            return 2
        except RuleError as exc:
            # A replacement worker reads the rule files again: they may have broken since.
            print(f"capi-gateway: rule error: {exc}", file=sys.stderr)
            return 2
        return 0

    if settings.workers > 1:
        from gateway.workers import prepare_buffer, run_workers

        # Create the key and the schema once, before forking, so workers find them ready.
        try:
            run(prepare_buffer(settings))
        except SchemaError as exc:
            print(f"capi-gateway: {exc}", file=sys.stderr)
            return 2
        except ConfigError as exc:
            _print_config_error(exc)
            return 2
        return run_workers(
            settings.workers, work, reload=reload_parent, grace=settings.shutdown_grace
        )
    # One process: its metrics live in memory; files of an earlier --workers run are stale.
    from gateway.ops.prometheus import discard_multiprocess_dir

    discard_multiprocess_dir(settings)
    return work()


def _demo(args: argparse.Namespace) -> int:
    from gateway.demo import (
        DEMO_API_KEY,
        DEMO_CATALOG_ID,
        DEMO_PIXEL_ID,
        DEMO_WEBHOOK_SECRETS,
        default_rules_dir,
        run_demo,
    )
    from gateway.log import setup_logging

    # The example webhooks read their secrets from the environment: give the demo known
    # ones, so signed webhooks can be tried against it (`rules/*.toml` say which).
    for name, value in DEMO_WEBHOOK_SECRETS.items():
        os.environ.setdefault(name, value)

    def make(upstream: str) -> Settings:
        # The demo takes the `CAPIGW_` settings (CAPIGW_ASSEMBLY_HOLD, ...) like `serve`, but
        # no Meta credentials, and always runs dry: nothing leaves the machine.
        own = os.environ.get("CAPIGW_CATALOG") or os.environ.get("CAPIGW_CATALOG_ID")
        catalog = {} if own else {"catalog_id": DEMO_CATALOG_ID}
        return load_settings(
            Sources(
                environ={k: v for k, v in os.environ.items() if k.startswith("CAPIGW_")},
                flags={
                    "upstream": upstream,
                    "listen": args.listen,
                    "buffer": args.buffer,
                    "dry_run": True,
                    "pixel_id": [DEMO_PIXEL_ID],
                    "events_api_keys": [DEMO_API_KEY],
                    "rules": args.rules or default_rules_dir(),
                    "log_format": "text",
                    # `curl` is a bot to the gateway: the demo says why a page has no tag.
                    "debug_headers": True,
                    # A catalog read off the shop's product pages (dry: recorded only).
                    "catalog": catalog,
                },
            )
        )

    from gateway.listen import check_can_listen

    # Validate the flags and the port before starting anything (or printing the banner).
    check_can_listen(make("http://127.0.0.1:1").listen)
    setup_logging("info", "text")
    run(run_demo(make))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
