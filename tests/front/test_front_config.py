"""Routes from rules, their portable regexes, and the generated text itself.

The translation may widen a rule, never narrow it: on any plain-ASCII path (the only ones
the front routes by rule; the others always go to the gateway) a request the rule
matches must match the front's regex. Python's `re` reads the portable syntax the same
way PCRE and RE2 do, so it stands in for them here; the real engines run in
test_front_proxies.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.front.command import coverage_warnings
from gateway.front.nginx import TARGET_END, ng_quote, nginx, nginx_rule_regex
from gateway.front.portable import Untranslatable, translate
from gateway.front.render import Backend, Front, FrontError, caddy
from gateway.front.routes import ODD_PATH, PLAIN_TARGET, literal_paths, page_rules, rule_routes
from gateway.pipeline.ruleload import load_rules
from gateway.pipeline.rules import RequestFacts, RuleSet

ROOT = Path(__file__).resolve().parents[2]
SAFE = "abcXYZ019._~!&()*+,;=:@/-"
PATTERNS = [
    r"^/a(?i:b)[\dx-z]+?\Z|x{2,}",
    r"/product/(?P<sku>[^/]+)",
    r"(?<=x)/a(?!b)",
    r"\.json$",
    r"^/(a|b)\1/",
    r"(?i)^/API/v[0-9]{1,2}/",
    r"\bcart\b",
    r"^/(?>a+)b",
    r"^/(x)?(?(1)y|z)",
    r"[^\W\d]{3}",
    r"/a.c",
    r"^/c\w*?/(?:z|y)+$",
]


def needs(tool: str) -> pytest.MarkDecorator:
    """Skip without `tool` outside CI; in CI (`CI=true`) the test runs and fails instead:
    scripts/install-proxies.sh installs what these tests need."""
    return pytest.mark.skipif(
        shutil.which(tool) is None and not os.environ.get("CI"),
        reason=f"{tool} not installed (scripts/install-proxies.sh installs it)",
    )


@pytest.mark.parametrize("pattern", PATTERNS)
@settings(max_examples=150, deadline=None)
@given(path=st.text(alphabet=SAFE, max_size=12).map(lambda t: "/" + t))
def test_a_translation_matches_at_least_what_python_matches(pattern: str, path: str) -> None:
    found = translate(pattern)
    if re.search(pattern, path):
        assert re.search(found.pattern, path), (pattern, found.pattern, path)
    elif found.exact:
        assert not re.search(found.pattern, path), (pattern, found.pattern, path)


def test_the_config_says_which_rules_it_routes_more_loosely(tmp_path: Path) -> None:
    ruleset = _rules(
        tmp_path, RULES_TOML + '[[rule]]\nname = "lb"\nevent = "Lead"\npath_regex = "(?<=/a)/b"\n'
    )
    text = nginx(_front(ruleset))
    assert "rule 'lb' (" in text and "looser on path (widened)" in text
    assert "rule 'both' (" in text and "looser on path_regex" in text
    assert "rule 'tap' (" in text and "no route needed" in text


def test_what_no_engine_takes_is_widened_and_says_so() -> None:
    assert not translate(r"(?<=x)/a").exact
    assert not translate(r"(a)\1").exact
    assert translate(r"/a{2,3}").exact
    with pytest.raises(Untranslatable):
        translate(r"/a{2000}")  # RE2's limit is 1000
    with pytest.raises(Untranslatable):
        translate("/caf\u00e9")  # only non-ASCII paths contain it: those are odd anyway


def test_odd_paths_are_the_ones_a_front_would_normalize() -> None:
    odd = re.compile(ODD_PATH)
    for path in ("/a%20b", "/a//b", "/a/./b", "/a/../b", "/caf\u00e9", "/a b", "/.env"):
        assert odd.search(path), path
    for path in ("/static/app.js", "/product/tee-01?x=%20&y=//", "/a:b@c,d;e=f"):
        assert not odd.search(path), path


@settings(max_examples=500, deadline=None)
@given(
    target=st.text(alphabet=SAFE + '%?/. \u00e9"', max_size=14).map(lambda t: "/" + t)
    | st.text(alphabet="ab/.?%", max_size=6)
)
def test_nginx_plain_target_test_is_exactly_the_odd_path_test_turned_around(target: str) -> None:
    assert bool(re.search(ODD_PATH, target)) is not bool(re.search(PLAIN_TARGET, target))


def test_only_literal_paths_without_hosts_become_hash_keys(tmp_path: Path) -> None:
    text = (
        RULES_TOML
        + NASTY
        + (
            '[[rule]]\nname = "lit"\nevent = "Lead"\nmethod = ["POST", "GET"]\n'
            'path = ["/api/cart", "/thank-you"]\n'
        )
    )
    routes = {r.rule: r for r in rule_routes(_rules(tmp_path, text))}
    assert literal_paths(routes["lit"]) == ("/api/cart", "/thank-you")
    for name in ("glob", "hosted", "regex", "both", "nasty", "nasty-regex"):
        assert literal_paths(routes[name]) is None, name
    config = nginx(_front(_rules(tmp_path, text)))
    assert '"/api/cart" $capi_via_GET_POST;' in config
    assert "map $request_method $capi_via_GET_POST {" in config


def test_coverage_of_a_literal_path_counts_its_methods(tmp_path: Path) -> None:
    post = '[[rule]]\nname = "cart"\nevent = "Lead"\nmethod = "POST"\npath = "/api/cart"\n'
    text = nginx(_front(_rules(tmp_path, post)))
    assert coverage_warnings(text, _rules(tmp_path, post), "/_capi") == []
    get = post.replace('"cart"', '"cart-view"').replace('"POST"', '"GET"')
    [warning] = coverage_warnings(text, _rules(tmp_path, post + get), "/_capi")
    assert "rule 'cart-view'" in warning
    anymethod = post.replace('method = "POST"\n', "")
    assert (
        coverage_warnings(
            nginx(_front(_rules(tmp_path, anymethod))), _rules(tmp_path, post + get), "/_capi"
        )
        == []
    )


def _rules(tmp_path: Path, text: str) -> RuleSet:
    (tmp_path / "r.toml").write_text(text)
    return load_rules(tmp_path)


RULES_TOML = """
[[rule]]
name = "glob"
event = "Lead"
method = ["POST", "put"]
path = ["/form/{id}/send", "/docs/**"]
[[rule]]
name = "hosted"
event = "Lead"
host = ["*.shop.example", "shop.example"]
path = "/x/?"
[[rule]]
name = "regex"
event = "Lead"
path_regex = "^/api/(cart|basket)(/|$)"
[[rule]]
name = "both"
event = "Lead"
path = "/b/*"
path_regex = "z$"
[[rule]]
name = "tap"
event = "AddToCart"
trigger = "click"
selector = "button"
"""


@settings(max_examples=300, deadline=None)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
    host=st.sampled_from(["shop.example", "a.shop.example", "other.example", "x.y.shop.example"]),
    path=st.sampled_from(
        ["/form/1/send", "/docs/a/b", "/x/1", "/x/12", "/api/cart", "/api/basket/1", "/b/z"]
    )
    | st.text(alphabet=SAFE, max_size=10).map(lambda t: "/" + t),
)
def test_the_nginx_regex_of_a_rule_matches_every_request_the_rule_does(
    tmp_path_factory: pytest.TempPathFactory, method: str, host: str, path: str
) -> None:
    ruleset = _rules(tmp_path_factory.mktemp("rules"), RULES_TOML)
    routes = {r.rule: r for r in rule_routes(ruleset)}
    assert set(routes) == {"glob", "hosted", "regex", "both"}  # the click rule rides on pages
    facts = RequestFacts(host=host, method=method, path=path, query={})
    for rule in ruleset.rules:
        if rule.trigger == "request" and rule.match_request(facts) is not None:
            line = f"{method} {host} {path}"
            assert re.search(nginx_rule_regex(routes[rule.name]), line), (rule.name, line)
            # The form nginx reads the raw request target with (query included).
            raw = nginx_rule_regex(routes[rule.name], end=TARGET_END)
            for target in (path, path + "?", path + "?a=1&b=/x"):
                assert re.search(raw, f"{method} {host} {target}"), (rule.name, target)


def _merged_regex(text: str) -> re.Pattern[str]:
    [line] = [x.strip() for x in text.splitlines() if x.strip().startswith('"~^(?:[^ ]+ [^ ]* (?!')]
    return re.compile(line.removeprefix('"~').removesuffix('" 1;').replace("\\\\", "\\"))


@settings(max_examples=400, deadline=None)
@given(
    method=st.sampled_from(["GET", "POST", "PUT"]),
    path=st.sampled_from(["/form/1/send", "/docs/a", "/api/cart", "/b/z", "/static/a.js"])
    | st.text(alphabet=SAFE + "%. ", max_size=10).map(lambda t: "/" + t),
    query=st.sampled_from(["", "?", "?q=1", "?a=/b//c&d=%20"]),
)
def test_the_merged_nginx_regex_takes_odd_targets_and_every_patterned_rule(
    tmp_path_factory: pytest.TempPathFactory, method: str, path: str, query: str
) -> None:
    ruleset = _rules(tmp_path_factory.mktemp("rules"), RULES_TOML)
    merged = _merged_regex(nginx(_front(ruleset)))
    line = f"{method} shop.example {path}{query}"
    if re.search(ODD_PATH, path + query):
        assert merged.search(line), line
    facts = RequestFacts(host="shop.example", method=method, path=path, query={})
    if any(r.trigger == "request" and r.match_request(facts) for r in ruleset.rules):
        assert merged.search(line), line
    if path == "/static/a.js":
        assert not merged.search(line), line  # an asset costs one failed match, no more


def _front(ruleset: RuleSet, **more: object) -> Front:
    options: dict[str, object] = {
        "gateway": Backend.parse("http://127.0.0.1:8080", "--gateway"),
        "site": Backend.parse("http://127.0.0.1:3000", "upstream"),
        "prefix": "/_capi",
        "routes": tuple(rule_routes(ruleset)),
        "listen": "127.0.0.1:8000",
        "server_name": "_",
        "preserve_host": True,
        "origin": "test rules",
        "page_rules": tuple(f"rule {r.name!r} ({r.file})" for r in page_rules(ruleset)),
    }
    options.update(more)
    return Front(**options)  # type: ignore[arg-type]


NASTY = """
[[rule]]
name = "nasty"
event = "Lead"
method = "POST"
path = "/a\\"; return 200 pwned; } server { listen 9; #{x}\\n}"
[[rule]]
name = "nasty-regex"
event = "Lead"
path_regex = "\\"`{http.request.uri}$x;\\\\\\\\"
"""


def test_rule_text_cannot_add_directives(tmp_path: Path) -> None:
    front = _front(_rules(tmp_path, NASTY))
    for text in (nginx(front), caddy(front)):
        # The rule's text is there only as escaped regex characters and comments.
        assert "pwned;" not in text and "listen 9;" not in text and "uri}$x" not in text
        lines = [line.strip() for line in text.splitlines()]
        assert not [line for line in lines if line.startswith(("return 200", "listen 9"))]
        assert lines.count("server {") <= 1


def test_addresses_are_validated() -> None:
    with pytest.raises(FrontError, match="--gateway"):
        Backend.parse("http://127.0.0.1:8080/path", "--gateway")
    with pytest.raises(FrontError, match="upstream"):
        Backend.parse("127.0.0.1:3000", "upstream")
    assert Backend.parse("https://shop.example", "upstream").authority == "shop.example:443"
    with pytest.raises(FrontError, match="--listen"):
        _front(RuleSet(), listen="80; include /etc/passwd")


@needs("nginx")
def test_nginx_accepts_the_generated_config_even_for_nasty_rules(tmp_path: Path) -> None:
    # Two literal paths one map key apart only by case: nginx lowercases keys (one key).
    cases = "".join(
        f'[[rule]]\nname = "c{i}"\nevent = "Lead"\nmethod = "{m}"\npath = "{p}"\n'
        for i, (m, p) in enumerate([("POST", "/Cart"), ("GET", "/cart"), ("PUT", "/CART")])
    )
    ruleset = _rules(tmp_path, NASTY + RULES_TOML + cases)
    site = nginx(_front(ruleset, preserve_host=False))
    assert '"/cart" $capi_via_GET_POST_PUT;' in site
    assert coverage_warnings(site, ruleset, "/_capi") == []
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n  include {tmp_path}/site.conf;\n}}\n"
    )
    done = subprocess.run(
        ["nginx", "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


@needs("caddy")
def test_caddy_validates_the_generated_config_even_for_nasty_rules(tmp_path: Path) -> None:
    text = caddy(_front(_rules(tmp_path, NASTY + RULES_TOML), listen="http://127.0.0.1:8000"))
    (tmp_path / "Caddyfile").write_text("{\n\tadmin off\n}\n" + text)
    done = subprocess.run(
        ["caddy", "validate", "--adapter", "caddyfile", "--config", str(tmp_path / "Caddyfile")],
        capture_output=True,
        text=True,
        check=False,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("render", [nginx, caddy])
def test_coverage_names_the_rules_a_config_misses(
    tmp_path: Path, render: Callable[[Front], str]
) -> None:
    old = _rules(tmp_path, RULES_TOML)
    text = render(_front(old, listen="http://:8000"))
    assert coverage_warnings(text, old, "/_capi") == []
    cart = '[[rule]]\nname = "cart"\nevent = "AddToCart"\nmethod = "POST"\npath = "/api/cart"\n'
    newer = _rules(tmp_path, RULES_TOML + cart)
    [warning] = coverage_warnings(text, newer, "/_capi")
    assert "rule 'cart'" in warning and "front-config" in warning
    assert "does not send /shop-capi" in coverage_warnings(text, old, "/shop-capi")[0]


def test_the_command_prints_a_config_or_names_what_is_missing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.cli import main

    for name in ("CAPIGW_UPSTREAM", "CAPIGW_CONFIG", "CAPIGW_RULES"):
        monkeypatch.delenv(name, raising=False)
    rules = str(ROOT / "rules")
    assert main(["front-config", "nginx", "--rules", rules]) == 2
    assert "upstream: no site to send assets to; pass --upstream URL" in capsys.readouterr().err
    bad = ["--upstream", "http://127.0.0.1:3000", "--gateway", "127.0.0.1:8080"]
    assert main(["front-config", "caddy", "--rules", rules, *bad]) == 2
    assert "--gateway: '127.0.0.1:8080' is not a URL" in capsys.readouterr().err
    assert main(["front-config", "nginx", "--rules", rules, *bad[:2]]) == 0
    text = capsys.readouterr().out
    assert "server 127.0.0.1:8080;" in text and "server 127.0.0.1:3000;" in text
    assert "rule 'purchase' (" in text and "listen 80;" in text


def test_check_still_reads_a_file_of_the_one_regex_per_rule_generator(tmp_path: Path) -> None:
    ruleset = _rules(tmp_path, RULES_TOML)
    routes = rule_routes(ruleset)
    # What front-config nginx wrote before the map chain: a regex line per rule.
    old = ['"~^[^ ]+ [^ ]* /_capi(?:/|$)" 1;']
    old += [ng_quote(nginx_rule_regex(route)) + " 1;" for route in routes]
    assert coverage_warnings("\n".join(old), ruleset, "/_capi") == []
    [warning] = coverage_warnings("\n".join(old[:-1]), ruleset, "/_capi")
    assert f"rule {routes[-1].rule!r}" in warning
