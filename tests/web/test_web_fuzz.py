"""The web edge fuzzed with hypothesis, driven by the app's own OpenAPI schema.

Every route the schema lists (and paths it does not) is called with generated path
parameters, methods, headers and bodies through Starlette's TestClient (the real
FastAPI app, a real SQLite file, confirmations to an in-memory transport). Whatever the
input: no 500, every response carries the security headers, a redirect never leads to
the request's Host, and a GET or HEAD never changes the database. Bounded: a few hundred
requests, well under a minute.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from newsletter.mail.transport import MemoryTransport
from newsletter.models import SubscriberStatus
from newsletter.web.app import create_app
from tests.support.helpers import add_subscribers, database, settings_for, table_dump

# api_route(GET, HEAD) gives both methods one operation id: harmless for a schema we only read
pytestmark = pytest.mark.filterwarnings("ignore:Duplicate Operation ID:UserWarning")

BASE_URL = "https://news.example.org"
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
SAFE = ("GET", "HEAD")
ODD_TEXT = [
    "²",
    "١٢",
    "0",
    "-1",
    "99999999999999999999999",
    "1e3",
    " 1",
    "..",
    "../../etc/passwd",
    "%2e%2e%2f",
    "%00",
    "%ff",
    "%",
    "a/",
    "/",
    "\u202e",
    "<script>alert(1)</script>",
    "' OR 1=1 --",
    "x" * 5000,
    "é",
    "🙂",
]
FIELDS = ("email", "name", "website", "List-Unsubscribe", "token", "csrf")


class Edge:
    """The app and its database, shared by the examples of one test."""

    def __init__(self, tmp_path: Path) -> None:
        self.settings = settings_for(tmp_path, NEWSLETTER_BASE_URL=BASE_URL)
        self.engine: Engine = database(self.settings)
        states = (SubscriberStatus.ACTIVE, SubscriberStatus.UNSUBSCRIBED, "pending")
        for i, state in enumerate(states):
            add_subscribers(self.engine, [f"fuzz{i}@example.org"], status=state)
        self.app: FastAPI = create_app(
            self.settings,
            engine=self.engine,
            factory=MemoryTransport,
            signup_limit=10_000,
            signup_window=1.0,
        )
        self.client = TestClient(self.app, base_url=BASE_URL, follow_redirects=False)
        with self.engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT token FROM subscriber").all()
        self.tokens = [r[0] for r in rows]
        self.routes = _routes(self.app)


def _routes(app: FastAPI) -> list[tuple[str, list[str]]]:
    """(path template, methods) of every operation in the app's OpenAPI schema."""
    schema: dict[str, Any] = app.openapi()
    return [(path, [m.upper() for m in ops]) for path, ops in schema["paths"].items()]


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[Edge]:
    made = Edge(tmp_path)
    with made.client:  # runs the lifespan: the confirmation worker starts and stops
        yield made


def _text() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(ODD_TEXT), st.text(max_size=40))


@st.composite
def requests(draw: st.DrawFn, edge: Edge, methods: tuple[str, ...]) -> dict[str, Any]:
    """One request: a schema route with filled parameters, or an arbitrary path."""
    if draw(st.integers(0, 4)) == 0:
        path = "/" + quote(draw(st.text(max_size=30)).lstrip("/"), safe="/%?=&")
    else:
        template, _ = draw(st.sampled_from(edge.routes))
        value = draw(st.one_of(st.sampled_from(edge.tokens), _text(), st.integers().map(str)))
        path = re.sub(r"\{[^}]+\}", lambda _: quote(value, safe="%") or "x", template)
        if draw(st.booleans()):
            path += draw(st.sampled_from(["/", "//", "?a=1", "/x", "%20"]))
    headers = draw(
        st.dictionaries(
            st.sampled_from(
                [
                    "Host",
                    "X-Forwarded-For",
                    "X-Forwarded-Host",
                    "Content-Type",
                    "Cookie",
                    "Accept",
                    "Origin",
                    "Referer",
                    "Range",
                    "If-None-Match",
                ]
            ),
            st.one_of(
                st.sampled_from(
                    [
                        "evil.example",
                        "multipart/form-data",
                        "text/plain",
                        "*/*",
                        "application/x-www-form-urlencoded",
                        "bytes=0-1",
                        "::1",
                    ]
                ),
                st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
            ),
            max_size=4,
        )
    )
    body = draw(
        st.one_of(
            st.none(),
            st.dictionaries(st.sampled_from(FIELDS), _text(), max_size=4).map(
                lambda d: {"data": d}
            ),
            st.binary(max_size=200).map(lambda b: {"content": b}),
        )
    )
    return {
        "method": draw(st.sampled_from(methods)),
        "url": path,
        "headers": headers,
        **(body or {}),
    }


def _send(edge: Edge, request: dict[str, Any]) -> Any:
    try:
        return edge.client.request(**request)
    except (
        ValueError,
        httpx.InvalidURL,
    ):  # the client refuses to send it (an invalid URL or header)
        return None  # nothing reached the app


def _check(request: dict[str, Any], response: Any) -> None:
    where = f"{request['method']} {request['url']!r}"
    assert response.status_code < 500, (where, response.status_code, response.text[:300])
    headers = response.headers
    assert headers.get("x-content-type-options") == "nosniff", where
    assert headers.get("referrer-policy") == "no-referrer", where
    assert "default-src 'none'" in headers.get("content-security-policy", ""), where
    location = headers.get("location")
    if location is not None:
        assert location.startswith(("/", BASE_URL + "/")) and not location.startswith("//"), (
            where,
            location,
        )


FUZZ = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(data=st.data())
def test_any_request_gets_an_answer_with_the_security_headers(edge: Edge, data: Any) -> None:
    request = data.draw(requests(edge, METHODS))
    response = _send(edge, request)
    if response is not None:
        _check(request, response)


@FUZZ
@given(data=st.data())
def test_get_and_head_never_change_the_database(edge: Edge, data: Any) -> None:
    request = data.draw(requests(edge, SAFE))
    before = table_dump(edge.engine)
    response = _send(edge, request)
    if response is not None:
        _check(request, response)
    assert table_dump(edge.engine) == before, (request["method"], request["url"])


@pytest.mark.parametrize(
    "request_",
    [
        {"method": "GET", "url": "/issues/%C2%B2"},  # issue 11 (8): isdigit() but not int()
        {"method": "GET", "url": "/issues/%D9%A1"},
        {"method": "GET", "url": "/subscribe/", "headers": {"Host": "evil.example"}},  # 11 (9)
        {"method": "HEAD", "url": "/unsubscribe/x/", "headers": {"Host": "evil.example"}},
        {
            "method": "POST",
            "url": "/subscribe",
            "content": b"--x\r\n",
            "headers": {"Content-Type": "multipart/form-data; boundary=x"},
        },
        {"method": "POST", "url": "/unsubscribe/%00", "data": {"List-Unsubscribe": "One-Click"}},
    ],
)
def test_known_hostile_requests(edge: Edge, request_: dict[str, Any]) -> None:
    """Shapes an attacker's run tried: kept as fixed cases next to the generated ones."""
    before = table_dump(edge.engine)
    response = edge.client.request(**request_)
    _check(request_, response)
    assert table_dump(edge.engine) == before
