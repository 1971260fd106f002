"""Stories -> Issue: record what the feed holds and freeze the new stories into one issue.

An Issue, once created, never changes: its subject and rendered bodies are
stored, so a resumed send sends the same content. The Issue, its stories'
new state and one pending Delivery per active subscriber are written in one
transaction, before any SMTP call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from newsletter.config import Settings
from newsletter.db import fence_erasures, read_session, write_session
from newsletter.issues.feed import Feed, FeedStory
from newsletter.issues.fetch import FetchResult
from newsletter.issues.render import (
    RenderedIssue,
    StoryLike,
    content_mode,
    render_issue,
    story_blocks,
)
from newsletter.models import (
    Delivery,
    DeliveryStatus,
    FeedState,
    Issue,
    IssueStatus,
    Story,
    StoryState,
    Subscriber,
    SubscriberStatus,
    table_of,
    utcnow,
)
from newsletter.phases import DELIVERY_ROWS, phase

_OLDEST = datetime.min.replace(tzinfo=UTC)
S = TypeVar("S", bound=StoryLike)  # Story rows in a send, FeedStory values in a preview


@dataclass
class Plan:
    """What a send would do with the feed as it is now (computed without writing)."""

    #: newest first, within the cap (per story: oldest first, each its own issue)
    new: list[FeedStory | Story] = field(default_factory=list)
    over_cap: list[FeedStory | Story] = field(default_factory=list)  # older new ones left out
    recipients: int = 0
    first_send: bool = False


def _sort_key(story: FeedStory | Story) -> datetime:
    return story.published_at or _OLDEST


def active_count(session: Session) -> int:
    query = (
        select(func.count())
        .select_from(Subscriber)
        .where(Subscriber.status == SubscriberStatus.ACTIVE)
    )
    return session.exec(query).one()


def plan_issue(engine: Engine, feed: Feed, *, max_stories: int, per_story: bool = False) -> Plan:
    """The stories not sent before (feed order, then older unsent ones), read-only.

    `per_story` (NEWSLETTER_ISSUE_PER=story): the oldest first, as they would go out; the
    newer ones past the cap wait for a later run, so none is over the cap for good."""
    with read_session(engine) as session:
        known = _known_uids(session, [s.uid for s in feed.stories])
        pending: list[FeedStory | Story] = [s for s in feed.stories if s.uid not in known]
        unsent: list[Story] = list(session.exec(select(Story).where(Story.state == StoryState.NEW)))
        pending += unsent
        first_send = session.exec(select(func.count()).select_from(Issue)).one() == 0
        recipients = active_count(session)
    pending.sort(key=_sort_key, reverse=True)
    if per_story:
        return Plan(pending[::-1][:max_stories], [], recipients, first_send)
    return Plan(pending[:max_stories], pending[max_stories:], recipients, first_send)


def last_issue_at(engine: Engine) -> datetime | None:
    """When the newest issue was created (the cadence counts from it); None before any."""
    with read_session(engine) as session:
        last = session.exec(select(func.max(Issue.created_at))).one()
    if last is not None and last.tzinfo is None:  # an aggregate may come back without a zone
        last = last.replace(tzinfo=UTC)
    return last


def waiting_stories(engine: Engine) -> int:
    """How many recorded stories are new (not in an issue yet)."""
    with read_session(engine) as session:
        query = select(func.count()).select_from(Story).where(Story.state == StoryState.NEW)
        return session.exec(query).one()


def next_issue_due(engine: Engine, interval: timedelta | None, now: datetime) -> datetime | None:
    """When NEWSLETTER_MIN_INTERVAL allows the next issue, if that is still after `now`
    (else None: an issue may be made now)."""
    if not interval:
        return None
    last = last_issue_at(engine)
    if last is None:
        return None
    try:
        due = last + interval
    except OverflowError:  # an interval of centuries: never
        due = datetime.max.replace(tzinfo=UTC)
    return due if due > now else None


def record_only(engine: Engine, feed: Feed, *, fetched: FetchResult | None = None) -> int:
    """Record the feed's stories while no issue is due, so that a weekly digest still holds
    the stories that left the feed's last 10 items during the week; returns how many new
    stories wait."""
    with write_session(engine) as session:
        record_stories(session, feed)
        remember_fetch(session, fetched)
        query = select(func.count()).select_from(Story).where(Story.state == StoryState.NEW)
        return session.exec(query).one()


def _story_row(story: FeedStory) -> dict[str, object]:
    return {
        "uid": story.uid,
        "guid": story.guid,
        "link": story.link,
        "title": story.title,
        "author": story.author,
        "summary_html": story.summary_html,
        "content_html": story.content_html,
        "image_url": story.image_url,
        "image_alt": story.image_alt,
        "published_at": story.published_at,
        "first_seen_at": utcnow(),
        "state": StoryState.NEW,
    }


def _known_uids(session: Session, uids: list[str]) -> set[str]:
    known: set[str] = set()
    for start in range(0, len(uids), 500):
        chunk = uids[start : start + 500]
        known.update(session.exec(select(Story.uid).where(col(Story.uid).in_(chunk))))
    return known


def record_stories(session: Session, feed: Feed) -> int:
    """Insert the feed's unseen stories (state new); never touch or drop known ones."""
    known = _known_uids(session, [s.uid for s in feed.stories])
    unseen: dict[str, FeedStory] = {}
    for story in feed.stories:  # a feed may repeat an item: keep its first copy
        if story.uid not in known:
            unseen.setdefault(story.uid, story)
    if unseen:
        session.execute(sa.insert(Story), [_story_row(s) for s in unseen.values()])
    return len(unseen)


def remember_fetch(session: Session, fetched: FetchResult | None) -> None:
    """Keep the validators for the next conditional GET, once the stories are recorded."""
    if fetched is None or fetched.data is None or not fetched.url.startswith("http"):
        return
    state = session.get(FeedState, fetched.url) or FeedState(url=fetched.url)
    state.etag, state.last_modified, state.checked_at = (
        fetched.etag,
        fetched.last_modified,
        utcnow(),
    )
    session.add(state)


def feed_validators(engine: Engine, url: str) -> tuple[str | None, str | None]:
    with read_session(engine) as session:
        state = session.get(FeedState, url)
        return (state.etag, state.last_modified) if state else (None, None)


@dataclass
class Created:
    issue: Issue | None
    stories: list[Story]
    skipped: int  # older new stories left out by --max-stories
    recipients: int
    reason: str = ""  # why no issue was made
    held_back: int = 0  # new stories kept for the next issue to stay under MAX_HTML_BYTES
    truncated_story_titles: tuple[str, ...] = ()  # cut short, "Continue reading on the site"


#: Gmail clips HTML past ~102 KB and hides what follows: the footer with the unsubscribe link.
MAX_HTML_BYTES = 95_000


def render_within_size(
    stories: Sequence[S],
    settings: Settings,
    *,
    issue_id: int | None,
    feed_title: str,
    feed_link: str | None,
) -> tuple[RenderedIssue, list[S]]:
    """Render under MAX_HTML_BYTES: the oldest stories wait, a lone long story is cut.

    The stories left out stay new, so the next `newsletter send` carries them.
    A single story that alone passes the limit (a whole post with `full`) is cut
    at a paragraph boundary, as late as still fits, and ends with "Continue
    reading on the site"; `truncated_story_titles` of the result names it.
    Sizes only grow with more stories or more blocks, so both are found by
    bisection: a handful of renders, not one per story or paragraph.
    """
    chosen = list(stories)

    def render(subset: list[S], max_blocks: int | None = None) -> RenderedIssue:
        return render_issue(
            subset,
            settings,
            issue_id=issue_id,
            feed_title=feed_title,
            feed_link=feed_link,
            max_blocks=max_blocks,
        )

    rendered = render(chosen)
    if _fits(rendered):
        return rendered, chosen
    fitting, low, high = None, 1, len(chosen) - 1  # the longest newest-first prefix that fits
    while low <= high:
        middle = (low + high) // 2
        attempt = render(chosen[:middle])
        if _fits(attempt):
            fitting, low = (attempt, middle), middle + 1
        else:
            high = middle - 1
    if fitting is not None:
        return fitting[0], chosen[: fitting[1]]
    chosen = chosen[:1]  # the newest story alone is still too big: cut it
    best = render(chosen, 0)  # kept even if it does not fit: there is nothing left to cut
    low, high = 1, story_blocks(chosen[0], content_mode(settings)) - 1
    while low <= high:
        middle = (low + high) // 2
        attempt = render(chosen, middle)
        if _fits(attempt):
            best, low = attempt, middle + 1
        else:
            high = middle - 1
    return best, chosen


def _fits(rendered: RenderedIssue) -> bool:
    return len(rendered.html.encode("utf-8")) <= MAX_HTML_BYTES


def create_issue(
    engine: Engine,
    settings: Settings,
    feed: Feed,
    *,
    fetched: FetchResult | None = None,
    max_stories: int = 10,
    min_stories: int = 1,
    per_story: bool = False,
) -> Created:
    """Record the feed's stories and, when enough are new, freeze them into an Issue.

    `per_story` (NEWSLETTER_ISSUE_PER=story): the oldest new story alone; the others stay
    new for the next call, so a crash between two issues loses and repeats nothing."""
    with write_session(engine) as session:
        record_stories(session, feed)
        remember_fetch(session, fetched)
        new = list(session.exec(select(Story).where(Story.state == StoryState.NEW)))
        new.sort(key=lambda s: (_sort_key(s), s.id or 0), reverse=True)
        recipients = active_count(session)
        if len(new) < min_stories:
            why = "no new stories" if not new else f"only {len(new)} new (--min-stories)"
            return Created(None, [], 0, recipients, why)
        if recipients == 0:
            return Created(None, [], 0, 0, "no active subscribers")
        if per_story:  # oldest first; the caller counts the issues against --max-stories
            chosen, older = new[-1:], []
        else:
            chosen, older = new[:max_stories], new[max_stories:]
        for story in older:
            story.state = StoryState.SKIPPED
            session.add(story)
        issue = Issue(subject="", html="", text="", status=IssueStatus.SENDING)
        session.add(issue)
        session.flush()
        if issue.id is None:
            raise RuntimeError("the database gave the new issue no id")
        wanted = len(chosen)
        rendered, chosen = render_within_size(
            chosen, settings, issue_id=issue.id, feed_title=feed.title, feed_link=feed.link
        )
        issue.subject, issue.html, issue.text = rendered.subject, rendered.html, rendered.text
        for story in chosen:
            story.state, story.issue_id = StoryState.ISSUED, issue.id
            session.add(story)
        session.add(issue)
        session.flush()
        now = utcnow()
        with phase(DELIVERY_ROWS):
            fence_erasures(session)  # no foreign key checks these rows (migration 0007)
            session.execute(
                sa.insert(Delivery).from_select(
                    ["issue_id", "subscriber_id", "status", "attempts", "updated_at"],
                    sa.select(
                        sa.literal(issue.id),
                        col(Subscriber.id),
                        sa.literal(DeliveryStatus.PENDING),
                        sa.literal(0),
                        sa.literal(now, type_=table_of(Delivery).c.updated_at.type),
                    ).where(col(Subscriber.status) == SubscriberStatus.ACTIVE),
                )
            )
        return Created(
            issue,
            chosen,
            len(older),
            recipients,
            held_back=wanted - len(chosen),
            truncated_story_titles=rendered.truncated_story_titles,
        )


def baseline(engine: Engine, feed: Feed, *, fetched: FetchResult | None = None) -> int:
    """Record every current story as already sent, without sending; returns how many."""
    with write_session(engine) as session:
        record_stories(session, feed)
        remember_fetch(session, fetched)
        new = list(session.exec(select(Story).where(Story.state == StoryState.NEW)))
        for story in new:
            story.state = StoryState.SKIPPED
            session.add(story)
        return len(new)


def render_preview(
    stories: Sequence[FeedStory | Story], settings: Settings, feed: Feed
) -> RenderedIssue:
    """Render stories as an issue would be (the same size guard), without storing anything."""
    rendered, _ = render_within_size(
        list(stories), settings, issue_id=None, feed_title=feed.title, feed_link=feed.link
    )
    return rendered


def unfinished_issues(engine: Engine) -> list[Issue]:
    with read_session(engine) as session:
        query = select(Issue).where(Issue.status == IssueStatus.SENDING).order_by(col(Issue.id))
        return list(session.exec(query))
