"""The settings reference in README.md, generated from the `Settings` model and the CLI.

    python -m gateway.reference           # print the Markdown table
    python -m gateway.reference --write   # replace the table in README.md

Each row comes from one field: its name, the `serve` flag that sets it (from the argument
parser), its default and its docstring. tests/test_docs.py fails when README.md's table
differs from what this prints.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import itertools
import re
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from gateway.config import _META_ENV as META_ENV
from gateway.settings import Settings

START = (
    "<!-- settings reference: generated from gateway/settings.py by "
    "`python -m gateway.reference --write`; edit the field's docstring, not this table -->"
)
END = "<!-- end of settings reference -->"
HEADER = "| key | flag | default | meaning |\n|---|---|---|---|"

# Defaults whose literal value says less than what it stands for.
_DEFAULT_TEXT = {
    "key_file": "`<buffer>.key`",
    "cookie_domain": "registrable domain",
    "secret": "derived from the key",
    "bot_user_agents": "built-in list",
    "scrub_query_params": "built-in list",
    "fbevents_url": "Meta's `fbevents.js`",
    "upstream_total_timeout": "`0` (none)",
    "insights": "see [Insights](#insights-reports-and-attribution)",
}
# Keys best set through one particular environment variable although they have no flag.
_FLAG_TEXT = {"secret": "env `CAPIGW_SECRET`"}


class ReferenceProblem(Exception):
    """The model cannot be rendered (a field without a description)."""


def flags() -> dict[str, str]:
    """Settings key -> how the `serve` command line sets it, e.g. ``--pixel-id`` (repeatable)."""
    from gateway.cli import _FLAG_KEYS, build_parser

    parser = build_parser()
    serve = next(
        action.choices["serve"]
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    out: dict[str, str] = {}
    for action in serve._actions:
        key = _FLAG_KEYS.get(action.dest)
        if key is None or not action.option_strings:
            continue
        flag = f"`{max(action.option_strings, key=len)}`"
        if isinstance(action, argparse._AppendAction):
            flag += " (repeatable)"
        out[key] = flag
    return out


def duration_fields() -> frozenset[str]:
    """Fields parsed as durations (seconds, or `30s`, `15m`, `7d`)."""
    validator = Settings.__pydantic_decorators__.field_validators.get("_duration")
    return frozenset(validator.info.fields) if validator is not None else frozenset()


def format_duration(seconds: float) -> str:
    """`7d`, `4h`, `15m`, `1.5s`: the largest unit that divides the value."""
    if seconds == 0:
        return "0"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def format_default(name: str, info: FieldInfo, durations: frozenset[str]) -> str:
    """The default of a field as the table shows it."""
    if name in _DEFAULT_TEXT:
        return _DEFAULT_TEXT[name]
    value: Any = info.get_default(call_default_factory=True)
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if name in durations and isinstance(value, int | float):
        return f"`{format_duration(float(value))}`"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    if isinstance(value, list):
        return f"`{', '.join(str(v) for v in value)}`" if value else "`[]`"
    return f"`{value}`"


def _cell(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().replace("|", "\\|")


def field_docs(model: type[BaseModel]) -> dict[str, str]:
    """Field name -> the docstring under its declaration in the source of the class or of
    the bases it takes fields from (Settings is put together from one base per area)."""
    docs: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if issubclass(cls, BaseModel) and cls is not BaseModel:
            docs.update(_own_field_docs(cls))
    return docs


def _own_field_docs(model: type[BaseModel]) -> dict[str, str]:
    # Read here rather than with pydantic's use_attribute_docstrings, which would parse the
    # source at every import of the settings module.
    tree = ast.parse(textwrap.dedent(inspect.getsource(model)))
    body = tree.body[0].body if isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for statement, following in itertools.pairwise(body):
        if (
            isinstance(statement, ast.AnnAssign)
            and isinstance(statement.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[statement.target.id] = inspect.cleandoc(following.value.value)
    return docs


def rows(model: type[BaseModel] = Settings) -> list[tuple[str, str, str, str]]:
    """(key, flag, default, meaning) for every setting, in the model's order."""
    flag_of = flags()
    env_of = {key: name for name, key in META_ENV.items()}
    durations = duration_fields()
    docs = field_docs(model)
    out = []
    undocumented = []
    for name, info in model.model_fields.items():
        description = info.description or docs.get(name)
        if not description:
            undocumented.append(name)
            continue
        flag = _FLAG_TEXT.get(name) or flag_of.get(name)
        if flag is None:
            flag = f"env `{env_of[name]}`" if name in env_of else "—"
        out.append(
            (
                f"`{name}`",
                flag,
                format_default(name, info, durations),
                _cell(description),
            )
        )
    if undocumented:
        raise ReferenceProblem(
            "settings without a description: "
            + ", ".join(undocumented)
            + '; add a docstring line under each field in gateway/settings.py ("""what it '
            'does"""), then run `python -m gateway.reference --write`'
        )
    return out


def render_table() -> str:
    """The Markdown table of every setting."""
    lines = [HEADER]
    lines += [f"| {' | '.join(row)} |" for row in rows()]
    return "\n".join(lines)


def render_block() -> str:
    """The table between the markers README.md keeps it in."""
    return f"{START}\n{render_table()}\n{END}"


def current_block(readme: str) -> str | None:
    """The marked block in README text, or None when the markers are missing."""
    start = readme.find(START)
    end = readme.find(END, start)
    if start < 0 or end < 0:
        return None
    return readme[start : end + len(END)]


def write(readme_path: Path) -> bool:
    """Replace the marked block in README.md; True when it changed."""
    text = readme_path.read_text()
    block = current_block(text)
    if block is None:
        raise ReferenceProblem(f"{readme_path}: no settings reference markers ({START!r})")
    fresh = render_block()
    if block == fresh:
        return False
    readme_path.write_text(text.replace(block, fresh, 1))
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Print the table, or with --write update README.md in place."""
    parser = argparse.ArgumentParser(prog="python -m gateway.reference", description=__doc__)
    parser.add_argument(
        "--write", action="store_true", help="replace the table in README.md between its markers"
    )
    parser.add_argument("--readme", type=Path, default=Path(__file__).parents[1] / "README.md")
    args = parser.parse_args(argv)
    try:
        if args.write:
            changed = write(args.readme)
            print(f"{args.readme}: {'updated' if changed else 'already up to date'}")
        else:
            print(render_block())
    except ReferenceProblem as exc:
        print(f"reference: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
