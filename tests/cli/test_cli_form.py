"""`newsletter form` (the site's signup snippet) and `newsletter send --content` (one run's
content mode), run as a user runs them: real processes, this checkout's code (issue 13)."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

from tests.support.helpers import BASE_ENV, database_url, run_cli, settings_for
from tests.support.smtpserver import SMTPServer


class _Tags(HTMLParser):
    """Every start tag with its attributes, and the label texts."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _tags(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(html)
    return parser.tags


def test_form_prints_an_accessible_post_form_to_the_subscribe_page(tmp_path: Path) -> None:
    done = run_cli(tmp_path, "form", **BASE_ENV)
    assert done.returncode == 0 and done.stderr == ""
    html = done.stdout
    tags = _tags(html)
    [form] = [a for t, a in tags if t == "form"]
    assert form["method"] == "post"
    assert form["action"] == "https://news.endseclusion.org/subscribe"
    inputs = {a["name"]: a for t, a in tags if t == "input"}
    assert set(inputs) == {"email", "name", "website"}  # `website`: the honeypot web checks
    assert inputs["email"]["type"] == "email" and "required" in inputs["email"]
    labels = {a["for"] for t, a in tags if t == "label"}
    assert {a["id"] for a in inputs.values()} == labels  # every field has its label
    [honeypot_box] = [a for t, a in tags if t == "div" and a.get("aria-hidden") == "true"]
    assert "left:-10000px" in (honeypot_box["style"] or "")
    assert inputs["website"]["tabindex"] == "-1"
    assert "<script" not in html.lower()  # no JavaScript: no script, no event handler
    assert not [name for _, attrs in tags for name in attrs if name.startswith("on")]
    assert "font:inherit" in html  # the site's fonts
    assert "confirm your address" in html and "unsubscribe" in html  # the consent sentence
    assert "AASR" in html


def test_form_style_none_drops_the_styles_but_keeps_the_honeypot_hidden(tmp_path: Path) -> None:
    done = run_cli(tmp_path, "form", "--style", "none", **BASE_ENV)
    assert done.returncode == 0, done.stderr
    styled = [(t, a) for t, a in _tags(done.stdout) if "style" in a]
    assert styled == [("div", styled[0][1])] and styled[0][1]["aria-hidden"] == "true"
    bad = run_cli(tmp_path, "form", "--style", "fancy", **BASE_ENV)
    assert bad.returncode == 2 and "fancy" in bad.stderr


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    settings = settings_for(tmp_path)  # copies the sample feed into tmp_path
    return {
        **BASE_ENV,
        "NEWSLETTER_FEED_URL": str(settings.feed_url),
        "NEWSLETTER_DATABASE_URL": database_url(tmp_path),
        **extra,
    }


def test_send_content_overrides_the_setting_for_a_preview(tmp_path: Path) -> None:
    env = _env(tmp_path, NEWSLETTER_STORY_CONTENT="summary")
    for mode in ("summary", "title"):
        done = run_cli(tmp_path, "send", "--content", mode, "--preview", f"{mode}.html", **env)
        assert done.returncode == 0, done.stderr
    summary = (tmp_path / "summary.html").read_text("utf-8")
    title = (tmp_path / "title.html").read_text("utf-8")
    assert "story-title" in title and "story-title" not in summary
    assert "Read the full story" in summary and "Read the full story" not in title
    assert not (tmp_path / "subscribers.db").exists()  # a preview records nothing


def test_send_content_overrides_the_setting_for_a_test_copy(
    tmp_path: Path, smtp_server: SMTPServer
) -> None:
    env = _env(tmp_path, NEWSLETTER_STORY_CONTENT="full", NEWSLETTER_SMTP_URL=smtp_server.url)
    done = run_cli(tmp_path, "send", "--content", "TITLE", "--to", "staff@example.org", **env)
    assert done.returncode == 0, done.stderr
    [copy] = smtp_server.wait_for(1)
    html = copy.parsed().get_body(("html",))
    assert html is not None and "story-title" in html.get_content()
    bad = run_cli(tmp_path, "send", "--content", "everything", "--dry-run", **env)
    assert bad.returncode == 2 and "everything" in bad.stderr


def test_send_content_leaves_the_welcome_describing_the_setting(
    tmp_path: Path, smtp_server: SMTPServer
) -> None:
    """A welcome owed when `send --content full` runs still says what the setting sends."""
    from newsletter.db import open_database
    from newsletter.subscribers.signup import confirm_signup, request_signup

    env = _env(tmp_path, NEWSLETTER_SMTP_URL=smtp_server.url)
    settings = settings_for(tmp_path, NEWSLETTER_SMTP_URL=smtp_server.url)
    engine = open_database(settings.database_url)
    request_signup(engine, settings, "new@example.org", send_now=False)
    with engine.connect() as conn:
        token = conn.exec_driver_sql(
            "SELECT confirm_token FROM subscriber WHERE confirm_token IS NOT NULL"
        ).scalar_one()
    confirm_signup(engine, token, ip=None, settings=settings)
    engine.dispose()
    done = run_cli(tmp_path, "send", "--content", "full", **env)
    assert done.returncode == 0, done.stderr
    assert "Also sent 1 welcome email and 1 confirmation email" not in done.stdout
    assert "Also sent 1 welcome email owed to new subscribers." in done.stdout
    [welcome] = [m for m in smtp_server.messages if m.parsed()["Subject"] == "Welcome to AASR"]
    text = welcome.parsed().get_body(("plain",))
    assert text is not None
    said = " ".join(text.get_content().split())
    assert "a short summary of each new story" in said and "in full" not in said
