"""One exception hierarchy for everything a user can fix.

The CLI and the web app turn these into a one-line message (plus a hint)
and a non-zero exit code in exactly one place; nothing else catches them.

    NewsletterError
     +-- ConfigError            a setting is missing or malformed
     |    +-- MissingSettings   required settings are unset (all named at once)
     +-- DatabaseMissing        a command that adds nobody was given a SQLite file that is not there
     +-- FeedError              the feed cannot be fetched or is not a feed
     +-- TemplateError          a template is missing or fails to render
     +-- SubscriberError        a bad address, an unknown subscriber
     +-- ImportFileError        a contacts file that cannot be imported
     +-- TransportError         the mail server cannot be used at all
     |    +-- SenderRejected    5.7.x: the sender's setup is wrong, stop
     |    +-- LoginRefused      the SMTP login failed: wrong user or password
     +-- SendInProgress         another `newsletter send` holds the lock
     +-- TokenError             an unknown, altered or expired token
"""

from __future__ import annotations


class NewsletterError(Exception):
    """Base class: a failure the user can fix; carries an optional hint."""

    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.__class__.__name__


class ConfigError(NewsletterError):
    hint = "Set it in the environment or in .env (see .env.example)."


class MissingSettings(ConfigError):
    """Every required setting that is unset, so one run names them all.

    `names` are NEWSLETTER_* names (an alternative reads "NEWSLETTER_SMTP_URL or
    NEWSLETTER_OUTBOX"); the CLI edge adds the command and the .env file it read.
    """

    hint = "Set them in the environment or in .env; see .env.example."

    def __init__(self, names: tuple[str, ...], *, detail: str | None = None) -> None:
        self.names = names
        self.detail = detail  # what an alternative means, shown before the hint
        plural = "s" if len(names) > 1 else ""
        hint = f"{detail} {self.hint}" if detail else None
        super().__init__(f"missing setting{plural}: {', '.join(names)}", hint=hint)


class DatabaseMissing(NewsletterError):
    """Only the commands that add people create a database: elsewhere a missing file is
    a wrong working directory or URL (cron), not an empty list to report on."""


class FeedError(NewsletterError):
    hint = "Check NEWSLETTER_FEED_URL; nothing was sent and nothing was recorded."


class TemplateError(NewsletterError):
    hint = "Check the templates in NEWSLETTER_TEMPLATES_DIR."


class SubscriberError(NewsletterError):
    pass


class ImportFileError(NewsletterError):
    hint = "Nothing was imported."


class TransportError(NewsletterError):
    hint = "Deliveries stay pending; run `newsletter send` again once the server is reachable."


class SenderRejected(TransportError):
    hint = (
        "The server refused the sender (5.7.x): check NEWSLETTER_FROM, SMTP credentials, "
        "SPF/DKIM. Nobody was suppressed; deliveries stay pending."
    )


class LoginRefused(TransportError):
    """The SMTP server refused our user name or password: waiting will not help."""

    hint = "Check the user name and password in NEWSLETTER_SMTP_URL."


class SendInProgress(NewsletterError):
    hint = "Wait for it to finish; run `newsletter status` to see its progress."


class TokenError(NewsletterError):
    pass
