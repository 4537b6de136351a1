"""docs/api.md (the MIS developer's reference) against the code, in both directions:
every route, status, error code, state name, webhook and the no-media detail form the
docs name exists, and everything the code serves or sends is in the docs."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from mis.answers import status_of
from mis.openapi import document
from mis.webhooks import EVENTS
from signaling.call import CallState, FailureReason
from signaling.events import CallEvent
from signaling.participant import ParticipantState
from signaling.registry import CallRegistry
from signaling.teardown import Teardown
from signaling.watchdog import Expectation, MediaWatchdog
from telemed.app import create_app
from telemed.embedded import Endpoints
from telemed.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
API = (DOCS / "api.md").read_text()
#: Statuses every API route can answer, said once in the docs instead of per route.
COMMON = {"401", "413", "422", "429", "503"}
ROUTE = re.compile(r"`(GET|POST|PUT|PATCH|DELETE) (/api/v1/[^`?\s]*)")


def section(heading: str, text: str = API) -> str:
    body = text.split(f"\n{heading}\n", 1)[1]
    return re.split(r"\n#{2,3} ", body, maxsplit=1)[0]


def rows(heading: str) -> list[list[str]]:
    """The cells of the table under `heading`, header and rule skipped."""
    lines = [ln for ln in section(heading).splitlines() if ln.startswith("| ")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[1:]]


def shape(path: str) -> str:
    """A path with its parameters unnamed: `{id}` and `{call_id}` are the same route."""
    return re.sub(r"\{[^}]+\}", "{}", path)


def served_routes() -> set[tuple[str, str]]:
    settings = load_settings(env={"TELEMED_DATA_DIR": "/nonexistent"})
    app = create_app(settings, Endpoints(redis_url="redis://127.0.0.1:9/0",
                                         kurento_urls=("ws://127.0.0.1:9/kurento",),
                                         turn_urls=(), turn_secrets=(),
                                         jwt_secret="s" * 32, api_key_hashes=("ab" * 32,)))
    routes = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if path.startswith("/api/v1/") and route.method != "HEAD":
            routes.add((route.method, shape(path)))
    return routes


def documented_routes() -> dict[tuple[str, str], set[str]]:
    """The route table: (method, path) to the statuses it lists."""
    table = {}
    for cells in rows("## Calls"):
        match = ROUTE.match(cells[0])
        assert match, cells
        table[(match[1], shape(match[2]))] = set(re.findall(r"`(\d{3})`", cells[2]))
    return table


def test_the_route_table_lists_exactly_the_routes_served() -> None:
    """Every /api/v1 route is in the table and every row is a route."""
    assert set(documented_routes()) == served_routes()


@pytest.mark.parametrize("doc", sorted(p.name for p in DOCS.glob("*.md")))
def test_every_api_route_a_doc_names_exists(doc: str) -> None:
    """No doc names an API route that answers 405 (teardown.md had DELETE /calls/{id})."""
    named = {(m, shape(p)) for m, p in ROUTE.findall((DOCS / doc).read_text())}
    assert named - served_routes() == set()


def test_each_route_documents_exactly_the_statuses_it_can_answer() -> None:
    """Per route, the table's statuses plus the common ones are the OpenAPI responses."""
    paths = document()["paths"]
    for (method, path), statuses in documented_routes().items():
        if path == "/api/v1/openapi.json":
            assert statuses == {"200"}
            continue
        (spec_path,) = [p for p in paths if shape(p) == path]
        declared = set(paths[spec_path][method.lower()]["responses"])
        assert statuses | COMMON == declared, (method, path)
    assert {"401", "413", "422", "429", "503"} <= COMMON


CODE_SOURCES = [*(ROOT / "mis").glob("*.py"), ROOT / "recordings" / "http.py"]


def codes_served() -> dict[str, int]:
    """Every error code the REST API can answer, with its status, read from the code:
    problem(status, code) calls, literal JSON bodies, and CallError codes (from mis and
    from the hub methods the API calls) through the API's status mapping."""
    served: dict[str, int] = {}
    for path in CODE_SOURCES:
        text = path.read_text()
        for status, code in re.findall(r'problem\((\d{3}), "([a-z_.]+)"', text):
            served[code] = int(status)
        for code in re.findall(r'code="([a-z_.]+)"', text):
            served[code] = status_of(code)
        for code, status in re.findall(
                r'"code": "([a-z_.]+)".{0,200}?status=(\d{3})', text, flags=re.S):
            served[code] = int(status)
        if "HTTPNotFound(text=NOT_FOUND" in text:
            (code,) = re.findall(r'NOT_FOUND = json.dumps\(\{"code": "([a-z_.]+)"', text)
            served[code] = 404
    # The hub's facade hands these to the registry and teardown, where the codes are.
    for method in (CallRegistry.create, Teardown.end, Teardown.kick):
        for code in re.findall(r'code="([a-z_.]+)"', inspect.getsource(method)):
            served[code] = status_of(code)
    return served


def test_the_rest_error_codes_table_matches_the_code() -> None:
    """Each code the API answers is documented with its status, and nothing else is."""
    documented = {c[0].strip("`"): int(c[1]) for c in rows("### Error codes")}
    served = codes_served()
    assert {"auth.invalid", "service.unavailable", "call.full", "recording.not_found"} <= \
        set(served), "the patterns above must find the codes in use"
    assert documented == served


def test_state_names_are_the_code_s() -> None:
    """Call and participant states in the docs are the enums; the OpenAPI agrees; the
    recording states named in the docs are the OpenAPI's."""
    calls = [c[0].strip("`") for c in rows("### States")]
    participants_heading = API.split("Each participant's `state`:", 1)[1]
    participants = re.findall(r"^\| `([a-z]+)` \|", participants_heading.split("\n\n#", 1)[0],
                              flags=re.M)
    assert calls[:len(CallState)] == [s.value for s in CallState]
    assert participants == [s.value for s in ParticipantState]
    spec = document()
    assert spec["paths"]["/api/v1/calls"]["get"]["parameters"][0]["schema"]["enum"] == \
        [s.value for s in CallState]
    states = section("## Recordings").split("**States**:", 1)[1].split(".", 1)[0]
    named = [n for n in re.findall(r"`([a-z]+)`", states) if n != "problems"]
    enum = spec["components"]["schemas"]["Recording"]["properties"]["state"]["enum"]
    assert sorted(named) == sorted(enum)


def test_the_webhook_events_documented_are_the_events_sent() -> None:
    """The documented events are webhooks.EVENTS, and each is sent from somewhere."""
    events = section("## Webhooks").split("Events:", 1)[1].split("\n\n", 1)[0]
    documented = re.findall(r"`((?:call|participant|recording)\.[a-z_]+)`", events)
    assert sorted(set(documented)) == sorted(EVENTS)
    senders = "".join(p.read_text() for p in (
        ROOT / "signaling" / "hub.py", ROOT / "signaling" / "registry.py",
        ROOT / "signaling" / "teardown.py", ROOT / "signaling" / "call_session.py",
        ROOT / "signaling" / "takeover.py", ROOT / "signaling" / "media_verdicts.py",
        ROOT / "recordings" / "worker.py", ROOT / "telemed" / "app.py"))
    by_value = {e.value: e.name for e in CallEvent}
    for event in EVENTS:
        # Call events are sent as `CallEvent.<NAME>`, the recordings' as strings.
        sent = f"CallEvent.{by_value[event]}" in senders if event in by_value \
            else f'"{event}"' in senders
        assert sent, f"{event} is documented but never sent"


@pytest.mark.parametrize("reason", [r.value for r in FailureReason])
def test_every_failure_reason_is_one_a_call_can_fail_with(reason: str) -> None:
    """A documented failure reason is used by code that fails calls."""
    name = FailureReason(reason).name
    sources = [p for pkg in ("signaling", "mis", "telemed") for p in (ROOT / pkg).glob("*.py")
               if p.name != "call.py"]
    assert any(f"FailureReason.{name}" in p.read_text() or f'"reason": "{reason}"'
               in p.read_text() for p in sources)


def test_the_no_media_detail_in_the_docs_is_the_form_the_watchdog_writes() -> None:
    """api.md's and protocol.md's examples are what the watchdog really produces."""
    watchdog = MediaWatchdog(timeout=1.0)
    watchdog.expect(Expectation("pat-1", "from-browser", "video"), 0.0)
    expired = watchdog.check(2.0, lambda e: "ICE CONNECTING")
    assert expired is not None
    (example,) = re.findall(r'"detail": "([^"]+)"', section("## Webhooks"))
    assert example == expired.detail
    protocol = " ".join((DOCS / "protocol.md").read_text().split())
    audio = MediaWatchdog(timeout=1.0)
    audio.expect(Expectation("pat-1", "from-browser", "audio"), 0.0)
    spoken = audio.check(2.0, lambda e: "ICE CONNECTING")
    assert spoken is not None and f"`{spoken.detail}`" in protocol
