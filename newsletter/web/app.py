"""The subscriber-facing web app (`newsletter serve`): unsubscribe, signup, archive.

An edge like the CLI: each route parses its input, calls one core function and
renders a page; every NewsletterError becomes a page in one place
(`_error_page`). Rules kept here, because mail scanners and bots visit too:

- a GET never changes anything; only a POST unsubscribes or confirms;
- the token in the URL is the only authority: no cookie, login or CSRF token,
  so RFC 8058 one-click POSTs (urlencoded or multipart) work as sent;
- an unknown, altered, truncated or expired token gets one generic 404 page;
- tokens never reach the access log (`TokenMaskingFilter`), referrers
  (`Referrer-Policy: no-referrer`), caches (`no-store`) or search engines;
- no JavaScript at all; the CSP forbids scripts outright;
- no SMTP inside a request: a signup records that a confirmation email is
  owed and the app's `ConfirmationWorker` thread sends it, so a hanging relay
  never slows `/health` or a one-click unsubscribe;
- a database that cannot take a write (locked by a long import) answers 503
  with Retry-After, which RFC 8058 senders honour, never a 500;
- redirects are built from NEWSLETTER_BASE_URL, never from the request's Host.

The pieces around the routes: pages.py renders the templates, archive.py
serves /issues, throttle.py is the per-IP signup limiter, tokens.py masks
tokens in the log.

    create_app(settings, *, engine=None, factory=None, ...) -> FastAPI
    log_config() -> dict            uvicorn logging with tokens masked
"""

from __future__ import annotations

import copy
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import FastAPI, Form, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse
from sqlalchemy.engine import Engine
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from newsletter.config import Settings
from newsletter.db import open_database
from newsletter.errors import NewsletterError, SubscriberError, TokenError, TransportError
from newsletter.issues.templating import render_template
from newsletter.mail.addresses import AddressError
from newsletter.mail.dkimkey import load_key
from newsletter.mail.transport import TransportFactory
from newsletter.models import SubscriberStatus
from newsletter.subscribers.confirmation import CONFIRM_BUTTON
from newsletter.subscribers.confirming import CONFIRM_TTL, ConfirmationWorker
from newsletter.subscribers.manage import unsubscribe_by_token
from newsletter.subscribers.signup import (
    ConfirmOutcome,
    SignupOutcome,
    confirm_signup,
    confirmation_state,
    expire_pending,
    request_signup,
    unsubscribe_status,
)
from newsletter.subscribers.welcome import site_link
from newsletter.web.archive import archive_router
from newsletter.web.pages import Pages
from newsletter.web.throttle import RateLimiter, client_ip, client_key
from newsletter.web.tokens import TokenMaskingFilter, is_token_path

log = logging.getLogger(__name__)

ROBOTS = "noindex, nofollow"
_BASE_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'"
)
#: Our own pages: no script of any kind, never framed (clickjacking a one-click button).
PAGE_CSP = _BASE_CSP + "; frame-ancestors 'none'"
#: The signup form may be embedded in the organisation's own site.
FORM_CSP = _BASE_CSP + "; frame-ancestors *"
ONE_CLICK = "one-click"  # RFC 8058 body List-Unsubscribe=One-Click
PAGE = "page"  # the button on our unsubscribe page
DB_RETRY_AFTER = 60  # seconds, for a write refused because the database is busy


def log_config() -> dict[str, Any]:
    """uvicorn's default logging, with tokens masked on the access logger itself."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["mask_tokens"] = {"()": TokenMaskingFilter}
    config["loggers"]["uvicorn.access"]["filters"] = ["mask_tokens"]
    return config


def _minutes(seconds: float) -> str:
    minutes = max(1, round(seconds / 60))
    return "1 minute" if minutes == 1 else f"{minutes} minutes"


def create_app(
    settings: Settings,
    *,
    engine: Engine | None = None,
    factory: TransportFactory | None = None,
    signup_limit: int | None = None,
    signup_window: float | None = None,
) -> FastAPI:
    """The web app for `settings`; `engine` and `factory` default to the configured ones.

    The signup limit comes from NEWSLETTER_SIGNUP_RATE_LIMIT unless given here.
    `app.state.confirmations` is the worker that mails owed confirmations: it
    starts with the app's lifespan (or at the first signup) and stops with it.
    """
    settings.require("from_address")
    engine = engine or open_database(settings.database_url)
    pages = Pages(settings)
    limit, window = settings.signup_rate_limit or (None, 600.0)
    limit = signup_limit if signup_limit is not None else limit
    window = signup_window if signup_window is not None else window
    limiter = RateLimiter(limit, window) if limit else None
    stylesheet = render_template(settings, "web/site.css", {})
    load_key(settings)  # a bad DKIM key stops `serve` here, not every confirmation later
    expire_pending(engine)
    confirmations = ConfirmationWorker(engine, settings, factory)

    def _site() -> str | None:
        """The site's own address for a "back to the site" link (None before any story)."""
        try:
            return site_link(engine)
        except sa.exc.SQLAlchemyError:  # a link is not worth failing the page for
            return None

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        confirmations.start()  # owed confirmations from before a restart go out now
        try:
            yield
        finally:
            confirmations.stop()

    app = FastAPI(
        title=f"{settings.list_title} newsletter",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
        redirect_slashes=False,  # Starlette's would send visitors to the request's Host
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.confirmations = confirmations

    # ---- headers and errors, once for every route ---------------------------

    @app.middleware("http")
    async def trailing_slash(request: Request, call_next: Any) -> Response:
        """`/subscribe/` -> BASE_URL/subscribe for a reader; never to another host."""
        path = request.url.path
        if path != "/" and path.endswith("/") and request.method in ("GET", "HEAD"):
            target = settings.url(path.rstrip("/"))
            if request.url.query:
                target += "?" + request.url.query
            return RedirectResponse(target, status_code=308)
        response: Response = await call_next(request)
        return response

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        path = request.url.path
        headers = response.headers
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("Referrer-Policy", "no-referrer")
        if path.rstrip("/") == "/subscribe":
            headers.setdefault("Content-Security-Policy", FORM_CSP)
        else:
            headers.setdefault("Content-Security-Policy", PAGE_CSP)
            headers.setdefault("X-Frame-Options", "DENY")
        if is_token_path(path):
            headers["Cache-Control"] = "no-store"
            headers["X-Robots-Tag"] = ROBOTS
        elif request.method == "POST":
            headers["Cache-Control"] = "no-store"
        return response

    @app.exception_handler(NewsletterError)
    async def _error_page(request: Request, exc: NewsletterError) -> Response:
        if isinstance(exc, TokenError):
            return pages.not_found()
        if isinstance(exc, AddressError | SubscriberError):
            form = getattr(request.state, "form", {})
            reason = exc.reason if isinstance(exc, AddressError) else exc.message
            error = f"Enter a valid email address, like name@example.com ({reason})."
            return pages.subscribe_form(400, error=error, site_url=_site(), **form)
        if isinstance(exc, TransportError):
            log.warning("confirmation email not sent: %s", exc.message)
            return pages.error(
                503,
                "We could not send the email",
                "Our mail server did not accept the confirmation email just now. "
                "Nothing was saved. Please try again in a few minutes.",
            )
        log.error("web request failed: %s", exc.message)
        return pages.error(500, "Something went wrong", "Please try again later.")

    @app.exception_handler(sa.exc.OperationalError)
    async def _database_busy(request: Request, exc: sa.exc.OperationalError) -> Response:
        # "database is locked" past the busy timeout (a long import), or the server is gone:
        # nothing was written; the client may simply repeat the request (RFC 8058 senders do)
        log.warning("web request refused, database busy: %s", " ".join(str(exc.orig).split()))
        response = pages.error(
            503,
            "Please try again in a minute",
            "We could not save your request just now. Nothing has changed yet: "
            "please repeat it in a minute.",
        )
        response.headers["Retry-After"] = str(DB_RETRY_AFTER)
        return response

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return pages.not_found()
        response = pages.error(exc.status_code, "This request cannot be handled", exc.detail)
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> Response:
        # runs outside the middleware above (Starlette's ServerErrorMiddleware): set headers here
        log.error("web request failed", exc_info=exc)
        headers = {
            "Content-Security-Policy": PAGE_CSP,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
        }
        return HTMLResponse(
            "<!DOCTYPE html><html lang='en'><title>Error</title><h1>Something went wrong</h1>"
            "<p>Please try again later.</p></html>",
            500,
            headers=headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> Response:
        return pages.error(400, "This request cannot be handled", "The form was not complete.")

    # ---- service pages --------------------------------------------------------

    @app.api_route("/health", methods=["GET", "HEAD"])
    def health() -> JSONResponse:
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except sa.exc.SQLAlchemyError:
            return JSONResponse({"status": "error", "database": "unreachable"}, 503)
        return JSONResponse({"status": "ok"})

    @app.get("/static/site.css")
    def site_css() -> Response:
        return Response(
            stylesheet,
            media_type="text/css",
            headers={"Cache-Control": "public, max-age=3600"},
        )

    @app.get("/robots.txt")
    def robots() -> PlainTextResponse:
        return PlainTextResponse("User-agent: *\nDisallow: /unsubscribe/\nDisallow: /confirm/\n")

    @app.get("/")
    def home() -> RedirectResponse:
        return RedirectResponse(f"{pages.root}/subscribe", status_code=303)

    # ---- unsubscribe ------------------------------------------------------------

    @app.api_route("/unsubscribe", methods=["GET", "HEAD"])
    def unsubscribe_help() -> HTMLResponse:
        """Where the archive's unsubscribe link leads: the personal link is in each email."""
        return pages.render("unsubscribe_help.html", noindex=False)

    @app.api_route("/unsubscribe/{token}", methods=["GET", "HEAD"])
    def unsubscribe_page(token: str) -> HTMLResponse:
        status = unsubscribe_status(engine, token)
        if status is None:
            raise TokenError("unknown unsubscribe token")
        if status in SubscriberStatus.SUPPRESSED:
            return pages.render("unsubscribed.html")
        return pages.render("unsubscribe.html")

    @app.post("/unsubscribe/{token}")
    def unsubscribe(
        token: str,
        one_click: Annotated[str, Form(alias="List-Unsubscribe")] = "",
    ) -> HTMLResponse:
        method = ONE_CLICK if one_click.strip().lower() == ONE_CLICK else PAGE
        if unsubscribe_by_token(engine, token, method=method) is None:
            raise TokenError("unknown unsubscribe token")
        return pages.render("unsubscribed.html")

    # ---- signup -------------------------------------------------------------------

    @app.api_route("/subscribe", methods=["GET", "HEAD"])
    def subscribe_form() -> HTMLResponse:
        return pages.subscribe_form()

    @app.post("/subscribe")
    def subscribe(
        request: Request,
        email: Annotated[str, Form(max_length=1000)] = "",
        name: Annotated[str, Form(max_length=1000)] = "",
        website: Annotated[str, Form(max_length=1000)] = "",
    ) -> HTMLResponse:
        """The signup, from our own page or the site's pasted form (`newsletter form`).

        No Origin or CSRF check, on purpose: the site's form posts here from another
        origin, and a signup only ever leads to a confirmation email (double opt-in);
        the per-IP limit, the per-mailbox hour and the honeypot are the brakes.
        """
        request.state.form = {"email": email.strip(), "name": name.strip()}
        if limiter is not None and not limiter.allow(client_key(client_ip(request))):
            response = pages.subscribe_form(
                429,
                notice="Too many signups came from your connection in the last few minutes. "
                f"Please try again in {_minutes(limiter.window)}.",
                notice_heading="Too many signups",
                site_url=_site(),
                **request.state.form,
            )
            response.headers["Retry-After"] = str(int(limiter.window))
            return response
        if website.strip():  # the honeypot: hidden from people, but autofill may fill it
            log.info("signup refused: honeypot field filled")
            return pages.subscribe_form(
                400,
                notice="A field that must stay empty was filled in, so nothing was sent "
                "(some browsers fill it in by themselves). Please enter your address "
                "below and press Sign up.",
                notice_heading="Your signup was not sent",
                site_url=_site(),
                **request.state.form,
            )
        result = request_signup(engine, settings, email, name or None, send_now=False)
        if result.outcome == SignupOutcome.QUEUED:
            confirmations.wake()
        elif result.outcome == SignupOutcome.UNDELIVERABLE:
            return pages.subscribe_form(
                400,
                error="Our confirmation email to this address was refused by its mail "
                "server: the mailbox does not exist. Check the address for typing "
                "mistakes and try again.",
                site_url=_site(),
                **request.state.form,
            )
        return pages.render("subscribe_sent.html", expires_days=CONFIRM_TTL.days, site_url=_site())

    @app.api_route("/confirm/{token}", methods=["GET", "HEAD"])
    def confirm_page(token: str) -> HTMLResponse:
        state = confirmation_state(engine, token)
        if state is None:
            raise TokenError("unknown or expired confirm token")
        if state == ConfirmOutcome.ALREADY:
            return pages.render("already_confirmed.html")
        return pages.render("confirm.html", button_label=CONFIRM_BUTTON)

    @app.post("/confirm/{token}")
    def confirm(request: Request, token: str) -> HTMLResponse:
        outcome = confirm_signup(engine, token, ip=client_ip(request), settings=settings)
        if outcome == ConfirmOutcome.ALREADY:
            return pages.render("already_confirmed.html")
        if settings.welcome:
            confirmations.wake()  # the welcome email goes from the worker, never from here
        return pages.render("confirmed.html", welcome=settings.welcome)

    app.include_router(archive_router(settings, engine, pages))
    return app
