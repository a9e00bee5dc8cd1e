"""Compiled rules: every matcher, the path index, several rules per request, event ids, drafts."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.pipeline.extract import Facts
from gateway.pipeline.rulefile import RuleError, RuleModel
from gateway.pipeline.ruleload import compile_rule
from gateway.pipeline.rules import RequestFacts, Rule, RuleSet

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def rule(index: int = 0, **fields: Any) -> Rule:
    """A compiled rule from the keys of a `[[rule]]` table."""
    raw = {"name": f"r{index}", "event": "Lead", **fields}
    return compile_rule(RuleModel.model_validate(raw), "t.toml", index)


def request(
    path: str = "/",
    *,
    method: str = "GET",
    host: str = "shop.example",
    query: dict[str, list[str]] | None = None,
    content_type: str = "",
    referrer: str | None = None,
) -> RequestFacts:
    return RequestFacts(
        host=host,
        method=method,
        path=path,
        query=query or {},
        content_type=content_type,
        referrer=referrer,
    )


def matches(r: Rule, facts: RequestFacts) -> bool:
    return r.match_request(facts) is not None


# Request matchers ---------------------------------------------------------------------------


def test_no_conditions_match_everything() -> None:
    assert rule().match_request(request("/anything/at/all")) == {}


def test_host_exact_glob_list_and_case() -> None:
    exact = rule(host="shop.example")
    assert matches(exact, request(host="shop.example"))
    assert matches(exact, request(host="SHOP.Example"))
    assert not matches(exact, request(host="shop.example.evil"))
    sub = rule(host="*.example.com")
    assert matches(sub, request(host="www.example.com"))
    assert not matches(sub, request(host="example.com"))
    assert not matches(sub, request(host="a.b.example.com"))
    both = rule(host=["a.example", "b.example"])
    assert matches(both, request(host="b.example"))
    assert not matches(both, request(host="c.example"))


def test_path_glob_with_named_groups() -> None:
    r = rule(path="/product/{sku}")
    assert r.match_request(request("/product/SKU-1")) == {"sku": "SKU-1"}
    assert not matches(r, request("/product/SKU-1/reviews"))
    assert not matches(r, request("/product/"))
    assert not matches(r, request("/products/SKU-1"))
    two = rule(path="/{lang}/blog/{slug}")
    assert two.match_request(request("/de/blog/hallo")) == {"lang": "de", "slug": "hallo"}


def test_path_star_doublestar_and_question_mark() -> None:
    star = rule(path="/blog/*")
    assert matches(star, request("/blog/post-1"))
    assert matches(star, request("/blog/"))
    assert not matches(star, request("/blog/2024/post"))
    deep = rule(path="/docs/**")
    assert matches(deep, request("/docs/a/b/c"))
    assert not matches(deep, request("/docs"))
    one = rule(path="/v?/items")
    assert matches(one, request("/v1/items"))
    assert not matches(one, request("/v//items"))
    assert not matches(one, request("/v12/items"))


def test_path_is_literal_outside_glob_tokens() -> None:
    r = rule(path="/a.b+(c)")
    assert matches(r, request("/a.b+(c)"))
    assert not matches(r, request("/axb+(c)"))


def test_path_list_first_match_gives_the_groups() -> None:
    r = rule(path=["/p/{sku}", "/product/{sku}/{variant}"])
    assert r.match_request(request("/p/A")) == {"sku": "A"}
    assert r.match_request(request("/product/A/red")) == {"sku": "A", "variant": "red"}
    assert not matches(r, request("/x/A"))


def test_path_regex_with_named_groups() -> None:
    r = rule(path_regex=r"^/order/(?P<order_id>\d+)(?:/(?P<step>\w+))?$")
    assert r.match_request(request("/order/17")) == {"order_id": "17"}
    assert r.match_request(request("/order/17/paid")) == {"order_id": "17", "step": "paid"}
    assert not matches(r, request("/order/abc"))
    unanchored = rule(path_regex="thank")
    assert matches(unanchored, request("/shop/thank-you"))


def test_path_and_path_regex_both_apply() -> None:
    r = rule(path="/order/{id}", path_regex=r"/order/\d+$")
    assert r.match_request(request("/order/17")) == {"id": "17"}
    assert not matches(r, request("/order/x"))


def test_method_case_and_list() -> None:
    post = rule(method="post")
    assert matches(post, request(method="POST"))
    assert not matches(post, request(method="GET"))
    either = rule(method=["PUT", "PATCH"])
    assert matches(either, request(method="PATCH"))
    assert not matches(either, request(method="POST"))


def test_query_present_absent_equal_regex() -> None:
    present = rule(query={"order": True})
    assert matches(present, request(query={"order": ["A1"]}))
    assert matches(present, request(query={"order": [""]}))
    assert not matches(present, request())
    absent = rule(query={"preview": False})
    assert matches(absent, request())
    assert not matches(absent, request(query={"preview": ["1"]}))
    equal = rule(query={"step": "done", "n": 2})
    assert matches(equal, request(query={"step": ["x", "done"], "n": ["2"]}))
    assert not matches(equal, request(query={"step": ["Done"], "n": ["2"]}))
    regex = rule(query={"q": {"regex": r"\S"}})
    assert matches(regex, request(query={"q": ["shoes"]}))
    assert not matches(regex, request(query={"q": ["   "]}))


def test_request_content_type() -> None:
    r = rule(content_type=["application/json", "Application/X-WWW-Form-Urlencoded"])
    assert matches(r, request(content_type="application/x-www-form-urlencoded"))
    assert matches(r, request(content_type="application/json"))
    assert not matches(r, request(content_type="multipart/form-data"))
    assert not matches(r, request())


def test_referrer_glob_and_regex() -> None:
    glob = rule(referrer="https://*.google.*/*")
    assert matches(glob, request(referrer="https://www.google.de/search?q=x"))
    assert not matches(glob, request(referrer="https://google.evil.example"))
    assert not matches(glob, request())
    regex = rule(referrer={"regex": "utm_source=news"})
    assert matches(regex, request(referrer="https://site.example/?utm_source=newsletter"))
    assert not matches(regex, request(referrer="https://site.example/"))


def test_all_conditions_must_hold() -> None:
    r = rule(method="POST", host="shop.example", path="/signup", query={"ref": False})
    assert matches(r, request("/signup", method="POST"))
    assert not matches(r, request("/signup", method="POST", query={"ref": ["x"]}))
    assert not matches(r, request("/signup", method="POST", host="other.example"))


# Response and body matchers ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "yes", "no"),
    [
        (302, [302], [200, 301, 303]),
        ([301, 302, 303], [301, 303], [200, 304]),
        ("300-399", [300, 302, 399], [200, 299, 400]),
        ("3xx", [300, 302, 399], [200, 400]),
        ("2xx, 302", [200, 204, 302], [301, 404]),
        ("200", [200], [201]),
    ],
)
def test_status(status: Any, yes: list[int], no: list[int]) -> None:
    r = rule(status=status)
    assert all(r.match_response(s, "text/html") for s in yes)
    assert not any(r.match_response(s, "text/html") for s in no)


@pytest.mark.parametrize(
    ("status", "fires"),
    [
        (200, True),
        (201, True),
        (302, True),
        (303, True),
        (304, False),
        (307, True),
        (404, False),
        (500, False),
    ],
)
def test_without_status_a_success_or_redirect_fires_but_no_error_or_304(
    status: int, fires: bool
) -> None:
    assert rule().match_response(status, "text/html") is fires


def test_response_type() -> None:
    r = rule(response_type=["text/html", "Application/JSON"])
    assert r.match_response(200, "text/html")
    assert r.match_response(200, "application/json")
    assert not r.match_response(200, "image/png")


def test_form_body_fields() -> None:
    r = rule(form={"email": True, "plan": "pro", "coupon": False, "phone": {"regex": r"^\+"}})
    good = {"email": ["j@example.com"], "plan": ["pro"], "phone": ["+49 1"]}
    assert r.match_body(good, None)
    assert not r.match_body({**good, "coupon": ["X"]}, None)
    assert not r.match_body({**good, "plan": ["free"]}, None)
    assert not r.match_body({**good, "phone": ["0049"]}, None)
    assert not r.match_body({"plan": ["pro"], "phone": ["+1"]}, None)


def test_json_body_fields_by_dotted_path() -> None:
    r = rule(json={"order.paid": "true", "order.total": 10, "customer.email": True})
    body = {"order": {"paid": True, "total": 10.0}, "customer": {"email": "j@example.com"}}
    assert r.match_body({}, body)
    assert not r.match_body({}, {**body, "order": {"paid": False, "total": 10}})
    assert not r.match_body({}, {"order": {"paid": True, "total": 10}})
    assert not r.match_body({}, None)
    assert not r.match_body({}, [1, 2])


# Several rules, and the index ---------------------------------------------------------------


def test_several_rules_may_match_one_request_in_file_order() -> None:
    rules = [
        rule(0, path="/thank-you"),
        rule(1, path="/other"),
        rule(2, path_regex="^/thank"),
        rule(3),
        rule(4, path="/thank-you", method="POST"),
    ]
    found = RuleSet.build(rules).matching(request("/thank-you"))
    assert [r.name for r, _ in found] == ["r0", "r2", "r3"]


def test_a_rule_with_two_paths_under_one_segment_matches_once() -> None:
    ruleset = RuleSet.build([rule(0, path=["/checkout", "/checkout/{step}"])])
    assert [r.name for r, _ in ruleset.matching(request("/checkout"))] == ["r0"]
    assert [r.name for r in ruleset.candidates("/checkout/pay")] == ["r0"]


def test_triggers_are_kept_apart() -> None:
    ruleset = RuleSet.build(
        [
            rule(0, path="/p"),
            rule(1, path="/p", trigger="click", selector="button"),
            rule(2, path="/p", trigger="submit", selector="form"),
        ]
    )
    assert [r.name for r, _ in ruleset.matching(request("/p"))] == ["r0"]
    assert [r.name for r, _ in ruleset.matching(request("/p"), "click")] == ["r1"]
    assert [r.name for r, _ in ruleset.matching(request("/p"), "browser")] == ["r1", "r2"]
    assert ruleset.browser
    assert not RuleSet.build([rule(0)]).browser


def test_candidates_are_few_among_many_rules() -> None:
    many = [rule(i, path=f"/section{i}/{{slug}}") for i in range(500)]
    anywhere = [rule(500, path_regex="^/section7/"), rule(501, path="/{lang}/x")]
    ruleset = RuleSet.build([*many, *anywhere])
    found = ruleset.candidates("/section7/shoes")
    assert [r.name for r in found] == ["r7", "r500", "r501"]
    assert len(ruleset.candidates("/nowhere")) == 2
    assert [r.name for r, _ in ruleset.matching(request("/section7/shoes"))] == ["r7", "r500"]
    assert [r.name for r, _ in ruleset.matching(request("/section499/a"))] == ["r499"]


SEGMENTS = ["", "a", "b", "product", "a.b", "x-y"]


def _paths() -> st.SearchStrategy[str]:
    part = st.sampled_from([*SEGMENTS, "*", "**", "{sku}", "?", "a?", "{lang}", "p*"])
    return st.lists(part, min_size=1, max_size=3).map(lambda parts: "/" + "/".join(parts))


def _dedupe_groups(path: str) -> str:
    # A glob names each group once; a second {sku} would be a rule error.
    seen: set[str] = set()

    def one(m: re.Match[str]) -> str:
        if m.group() in seen:
            return "*"
        seen.add(m.group())
        return m.group()

    return re.sub(r"\{\w+\}", one, path)


rule_fields = st.fixed_dictionaries(
    {},
    optional={
        "path": st.one_of(_paths(), st.lists(_paths(), min_size=1, max_size=3)),
        "path_regex": st.sampled_from(["^/a", "b$", "^/(?P<first>[^/]+)/", "product"]),
        "method": st.sampled_from(["GET", ["POST", "PUT"]]),
        "host": st.sampled_from(["shop.example", "*.example"]),
        "query": st.sampled_from([{"q": True}, {"q": False}, {"q": "1"}]),
        "trigger": st.sampled_from(["click", "submit"]),
    },
).map(
    lambda f: {
        **f,
        **(
            {"path": [_dedupe_groups(p) for p in f["path"]]}
            if isinstance(f.get("path"), list)
            else {"path": _dedupe_groups(f["path"])}
            if "path" in f
            else {}
        ),
        **({"selector": "button"} if "trigger" in f else {}),
    }
)
requests = st.builds(
    request,
    st.lists(st.sampled_from([*SEGMENTS, "SKU-1", "de"]), min_size=1, max_size=4).map(
        lambda parts: "/" + "/".join(parts)
    ),
    method=st.sampled_from(["GET", "POST", "PUT"]),
    host=st.sampled_from(["shop.example", "www.example", "other.test"]),
    query=st.sampled_from([{}, {"q": ["1"]}, {"q": ["2"]}]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(rule_fields, max_size=12), requests, st.sampled_from(["request", "browser"]))
def test_index_gives_what_a_linear_scan_gives(
    fields: list[dict[str, Any]], facts: RequestFacts, trigger: str
) -> None:
    rules = [rule(i, **f) for i, f in enumerate(fields)]
    ruleset = RuleSet.build(rules)
    naive = [
        (r, groups)
        for r in rules
        if (r.trigger == "request") == (trigger == "request")
        and (groups := r.match_request(facts)) is not None
    ]
    assert ruleset.matching(facts, trigger) == naive
    # The index may leave rules out but never lets one through twice.
    names = [r.name for r in ruleset.candidates(facts.path)]
    assert len(names) == len(set(names))


# Drafts -----------------------------------------------------------------------------------


def test_draft_carries_the_rule_event_id_and_values() -> None:
    r = rule(
        path="/thank-you",
        event="Purchase",
        event_id="purchase-{order_id}",
        action_source="email",
        extract={
            "order_id": {"source": "query", "key": "order"},
            "value": {"source": "query", "key": "total"},
            "currency": "EUR",
            "email": {"source": "query", "key": "e"},
        },
        custom={"coupon": {"source": "query", "key": "c"}},
    )
    facts = Facts(query={"order": ["A17"], "total": ["19,90"], "e": ["j@example.com"]})
    assert r.draft(facts) == {
        "event_name": "Purchase",
        "event_id": "purchase-A17",
        "action_source": "email",
        "custom_data": {"order_id": "A17", "value": 19.9, "currency": "EUR"},
        "user_data": {"email": "j@example.com"},
    }


def test_draft_is_none_when_a_required_value_is_missing() -> None:
    r = rule(require=["order_id"], extract={"order_id": {"source": "query", "key": "order"}})
    assert r.draft(Facts()) is None
    assert r.draft(Facts(query={"order": ["  "]})) is None
    assert r.draft(Facts(query={"order": ["A1"]})) is not None


def test_draft_without_values_has_an_empty_user_data() -> None:
    draft = rule().draft(Facts())
    assert draft is not None
    assert draft["user_data"] == {}
    assert "custom_data" not in draft


def test_stitch_values() -> None:
    r = rule(
        extract={
            "order_id": {"source": "query", "key": "o"},
            "email": {"source": "form", "key": "e"},
        },
        stitch={"keys": ["order_id", "email"], "ttl": "2d", "share_event_id": True},
    )
    assert r.stitch_ttl == 2 * 86400
    assert r.stitch_event_id
    draft = r.draft(Facts(query={"o": ["A1"]}))
    assert draft is not None
    assert r.stitch_values(draft) == {"order_id": "A1"}


def test_compiled_rule_knows_what_it_reads() -> None:
    page = rule(
        extract={
            "value": {"source": "jsonld", "key": "Product.offers.price"},
            "content_name": {"source": "meta", "key": "OG:Title"},
            "content_ids": {"source": "selector", "key": "li.item", "attr": "data-sku"},
        }
    )
    assert page.wants.jsonld
    assert page.wants.meta == frozenset({"og:title"})
    assert [str(s) for s in page.wants.selectors] == ["li.item"]
    assert not page.needs_body
    assert rule(form={"email": True}).needs_body
    assert rule(extract={"email": {"source": "json", "key": "e"}}).needs_body
    assert rule().wants.empty


def test_compile_errors_name_rule_and_field() -> None:
    model = RuleModel.model_validate({"name": "x", "event": "Lead", "status": "4xx-ish"})
    with pytest.raises(RuleError, match=r"^where\.toml: rule 'x': status: '4xx-ish' is not"):
        compile_rule(model, "where.toml", 0)
