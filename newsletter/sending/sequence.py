"""The issues one `newsletter send` delivers, in order: recover, the unfinished ones, then new.

Order: deliveries a crash left `sending` become `unknown` and what --retry-unknown
or --retry-failed asks for is reopened (queue.py); every unfinished issue is
finished first; then the new stories become an issue (NEWSLETTER_ISSUE_PER=story:
one issue per story, oldest first, each made only after the one before was
delivered, up to --max-stories issues). NEWSLETTER_MIN_INTERVAL is checked once,
before the run's first new issue. On PostgreSQL the making of an issue is
serialised (creation_lock), and a worker that finds nothing new helps with the
issue another one just made.

`deliver_issue` (given by run.py) sends one issue and records its result; this
module only decides which issue comes next and what the run says about it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.engine import Engine

from newsletter import phases
from newsletter.config import Settings
from newsletter.issues import create as issue_store
from newsletter.issues.feed import Feed
from newsletter.issues.fetch import FetchResult
from newsletter.models import Issue, Story, utcnow
from newsletter.sending.deliver import IssueResult
from newsletter.sending.lock import creation_lock
from newsletter.sending.options import SendOptions, SendResult
from newsletter.sending.queue import recover, reopen, settle_erased

#: sends one issue (resumed or new) and returns what happened to it
DeliverIssue = Callable[[Issue, bool], IssueResult]


@dataclass
class IssueSequence:
    """One run's walk through its issues; `result` collects what it says."""

    engine: Engine
    settings: Settings
    options: SendOptions
    feed: Feed
    fetched: FetchResult
    result: SendResult
    deliver_issue: DeliverIssue
    #: PostgreSQL: other workers may make and send issues at the same time
    shared: bool
    #: the stories of the issues made so far in this run
    made: list[Story] = field(default_factory=list)

    def run(self) -> None:
        """Recover, finish unfinished issues, then make and send new ones."""
        with phases.phase(phases.RECOVERY):
            lost = recover(self.engine)
            erased = settle_erased(self.engine)
        if erased:
            self.result.notes.append(
                f"{erased} deliveries were skipped: their subscriber is no longer stored."
            )
        if lost:
            self.result.notes.append(
                f"{lost} deliveries were interrupted mid-send and are marked unknown "
                "(not resent; use --retry-unknown to resend them)."
            )
        options = self.options
        reopened = reopen(self.engine, unknown=options.retry_unknown, failed=options.retry_failed)
        if reopened:
            self.result.notes.append(f"{reopened} deliveries put back in the queue.")
        if not self.help_unfinished():
            return
        while self._one_more():
            if not options.per_story(self.settings):
                return
            if len(self.result.issues_made) >= options.max_stories:
                waiting = issue_store.waiting_stories(self.engine)
                if waiting:
                    self.result.notes.append(
                        f"{waiting} newer {'story waits' if waiting == 1 else 'stories wait'} "
                        f"for the next run (--max-stories {options.max_stories} issues a run)."
                    )
                return

    def _one_more(self) -> bool:
        """Make the next issue and send it; False when the run has nothing more to do."""
        with creation_lock(self.engine) if self.shared else nullcontext():
            created = self._next_issue()
        if created is None:  # not due yet
            if self.shared:  # another worker may have just made the last issue: help with it
                self.help_unfinished()
            return False
        if created.issue is None and self.made:
            return False  # every new story went out, each as its own issue
        self.made += created.stories
        return self._send_new(created)

    def _next_issue(self) -> issue_store.Created | None:
        """Make the run's next issue, or None when the minimum interval has not passed
        (then the feed's stories are only recorded and the result says why)."""
        engine, options = self.engine, self.options
        if not self.made:  # the cadence spaces the runs that make issues, not their issues
            due = issue_store.next_issue_due(engine, options.interval(self.settings), utcnow())
            if due is not None:
                waiting = issue_store.record_only(engine, self.feed, fetched=self.fetched)
                if waiting:
                    self.result.not_yet = not_yet_sentence(engine, due, waiting=waiting)
                else:
                    self.result.nothing_new = "no new stories"
                return None
        with phases.phase(phases.ISSUE_CREATION):
            return issue_store.create_issue(
                engine,
                self.settings,
                self.feed,
                fetched=self.fetched,
                max_stories=options.max_stories,
                min_stories=1 if self.made else options.min_stories,
                per_story=options.per_story(self.settings),
            )

    def _send_new(self, created: issue_store.Created) -> bool:
        """Send the issue just made (or say why none was); False when the run must stop."""
        result = self.result
        result.stories = self.made
        if created.held_back:
            result.notes.append(
                f"{created.held_back} older new stories were kept for the next issue, so "
                "that this email stays under Gmail's clipping size."
            )
        for title in created.truncated_story_titles:
            result.notes.append(
                f'"{title}" alone passes Gmail\'s clipping size: it was cut at a paragraph '
                'boundary and ends with "Continue reading on the site".'
            )
        result.recipients = created.recipients
        if created.issue is None:
            result.nothing_new = created.reason
            if self.shared:  # another worker may have just made one: help with it
                self.help_unfinished()
            return False
        if created.skipped:
            result.notes.append(
                f"{created.skipped} older new stories were left out (--max-stories "
                f"{self.options.max_stories}) and recorded as sent."
            )
        result.issues_made.append(created.issue.id or 0)
        return self.deliver_issue(created.issue, False).report.stopped is None

    def help_unfinished(self) -> bool:
        """Work on every unfinished issue not worked on yet; False when the run must stop."""
        seen = {done.issue_id for done in self.result.issues}
        for issue in issue_store.unfinished_issues(self.engine):
            if issue.id in seen:
                continue
            if self.deliver_issue(issue, True).report.stopped is not None:
                return False
        return True


def not_yet_sentence(engine: Engine, due: datetime, *, waiting: int) -> str:
    """The exit-0 sentence of a run the minimum interval holds back."""
    last = issue_store.last_issue_at(engine)
    ago = "" if last is None else f"went out {_ago(utcnow() - last)}, "
    stories = "1 new story waits" if waiting == 1 else f"{waiting} new stories wait"
    return f"Not yet: the last issue {ago}next one after {due:%Y-%m-%d %H:%M} UTC ({stories})."


def _ago(age: timedelta) -> str:
    """'3 days ago', '5 hours ago', '12 minutes ago': the unit a reader would use."""
    seconds = max(0, int(age.total_seconds()))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'' if n == 1 else 's'} ago"
    return "just now"
