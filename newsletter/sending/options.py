"""What one `newsletter send` was asked to do (SendOptions) and what it did (SendResult).

Their own module because the run (run.py) and the order of its issues
(sequence.py) both read and fill them; the CLI prints a SendResult and raises
its `error` after printing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from newsletter.config import Settings
from newsletter.errors import NewsletterError
from newsletter.issues.feed import FeedStory
from newsletter.models import Story
from newsletter.sending.deliver import IssueResult


@dataclass
class SendOptions:
    """The flags of one run; None means "as the settings say"."""

    dry_run: bool = False
    preview: Path | None = None
    to: str | None = None
    baseline: bool = False
    max_stories: int = 10
    min_stories: int = 1
    retry_unknown: bool = False
    retry_failed: bool = False
    #: --issue-per: "send" or "story" for this run (None: NEWSLETTER_ISSUE_PER)
    issue_per: str | None = None
    #: --min-interval for this run (None: NEWSLETTER_MIN_INTERVAL; zero: no minimum)
    min_interval: timedelta | None = None

    def per_story(self, settings: Settings) -> bool:
        return (self.issue_per or settings.issue_per) == "story"

    def interval(self, settings: Settings) -> timedelta | None:
        if self.min_interval is not None:
            return self.min_interval or None
        return settings.min_interval


@dataclass
class SendResult:
    """What happened, for the CLI to print; `error` is raised by the CLI after printing."""

    notes: list[str] = field(default_factory=list)
    issues: list[IssueResult] = field(default_factory=list)
    stories: Sequence[FeedStory | Story] = ()
    recipients: int = 0
    destination: str = ""
    error: NewsletterError | None = None
    #: why no new issue was made ("no new stories"), told after any resumed issue
    nothing_new: str | None = None
    #: --preview/--to with no new story: `stories` are the feed's latest instead
    latest: bool = False
    #: the minimum interval has not passed: "Not yet: the last issue went out ..." (exit 0)
    not_yet: str | None = None
    #: ids of the issues this run created (ISSUE_PER=story: up to --max-stories of them)
    issues_made: list[int] = field(default_factory=list)
