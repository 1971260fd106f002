"""Shared fixtures: a real SMTP server, a real browser, and strict mode for CI.

The tests are grouped like newsletter/ (tests/sending/, tests/web/, ...); the local
servers they start and shared helpers live in tests/support/ and are imported as
``from tests.support.smtpserver import SMTPServer``; fixture files live in tests/data/;
packaging, migration, spam and accessibility tests in tests/system/.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.browser import CHROMIUM, LAUNCH_ARGS, save_screenshot, unavailable_reason
from tests.support.helpers import use_database
from tests.support.pgserver import POSTGRES_ENV, PostgresServer
from tests.support.pgserver import unavailable_reason as postgres_unavailable_reason
from tests.support.smtpserver import SMTPServer

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

STRICT_ENV = "NEWSLETTER_STRICT_SERVICES"


def _strict() -> bool:
    return os.environ.get(STRICT_ENV) == "1"


def pytest_configure(config: pytest.Config) -> None:
    # aiosmtpd warns per connection when AUTH runs on plain text: intended in tests
    config.addinivalue_line(
        "filterwarnings", "ignore:Requiring AUTH while not requiring TLS:UserWarning"
    )
    if _strict():
        # a module skipped at import becomes a collection error: report it, run the rest
        config.option.continue_on_collection_errors = True


# ---- strict mode: in CI a skipped test is a failed test ---------------------


def _skip_reason(longrepr: Any) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _fail_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Turn a skip into a failure that still says why, so a missing service breaks CI."""
    reason = _skip_reason(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped, but {STRICT_ENV}=1 forbids skips: {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Iterator[None] | pytest.TestReport:
    report: pytest.TestReport = yield
    # an expected failure (xfail) is reported as skipped too: leave it alone
    if _strict() and report.skipped and not hasattr(report, "wasxfail"):
        _fail_skip(report)
    item.stash.setdefault(_reports_key, {})[report.when] = report
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Iterator[None] | pytest.CollectReport:
    report: pytest.CollectReport = yield
    # module-level pytest.importorskip / skip(allow_module_level=True)
    if _strict() and report.skipped:
        _fail_skip(report)
    return report


_reports_key = pytest.StashKey[dict[str, pytest.TestReport]]()


# ---- SMTP -------------------------------------------------------------------


@pytest.fixture
def make_smtp_server() -> Iterator[Callable[..., SMTPServer]]:
    """Factory: ``make_smtp_server(tls="starttls", auth=("u", "p"), data_delay=2)``.

    Every server made is started at once and stopped after the test.
    """
    servers: list[SMTPServer] = []

    def make(**options: Any) -> SMTPServer:
        server = SMTPServer(**options).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def smtp_server(make_smtp_server: Callable[..., SMTPServer]) -> SMTPServer:
    """A plain SMTP server that accepts everything (no AUTH, no TLS)."""
    return make_smtp_server()


# ---- browser ----------------------------------------------------------------


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Headless chromium for the whole session (launching costs about a second)."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A page in a fresh context (no cookies shared between tests).

    When the test fails, a screenshot is kept as test-artifacts/screenshots/FAILED-<test>.png.
    """
    context = browser.new_context()
    new_page = context.new_page()
    try:
        yield new_page
        reports = request.node.stash.get(_reports_key, {})
        if "call" in reports and reports["call"].failed:
            with contextlib.suppress(Exception):  # a crashed page must not hide the failure
                save_screenshot(new_page, f"FAILED-{request.node.name}")
    finally:
        context.close()


# ---- databases: SQLite, and PostgreSQL when NEWSLETTER_TEST_POSTGRES_URL is set ----


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The PostgreSQL server of NEWSLETTER_TEST_POSTGRES_URL, with a migrated template."""
    reason = postgres_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    server = PostgresServer(os.environ[POSTGRES_ENV]).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database of its own for one test."""
    url = postgres_server.create()
    try:
        yield url
    finally:
        postgres_server.drop(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test once per database: `helpers.settings_for` / `database_url` follow it.

    Modules opt in with ``pytestmark = pytest.mark.usefixtures("db_backend")``.
    """
    if request.param == "sqlite":
        use_database(None)
        yield "sqlite"
        return
    use_database(request.getfixturevalue("postgres_url"))
    try:
        yield "postgresql"
    finally:
        use_database(None)
