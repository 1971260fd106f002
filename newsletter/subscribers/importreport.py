"""What an import reports: its counts, its progress stages and its rejected-rows file."""

from __future__ import annotations

import contextlib
import csv
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from newsletter.subscribers.csvformats import neutralise_cell

CHECKING = "checking"
WRITING = "writing"
#: progress(stage, done, total): stage is CHECKING (file rows) or WRITING (staged contacts)
Progress = Callable[[str, int, int], None]


@dataclass
class ImportReport:
    """What an import did (or, in a dry run, would do).

    imported: new active subscribers; updated: existing ones whose data changed
    (name, opt-in time, pending -> active, or unsubscribed because the file says
    so); unchanged; duplicates: rows repeating an address met earlier in the
    file; rejected: rows not imported (see `reasons`); kept_unsubscribed: rows
    whose contact is not mailable and stays so (unsubscribed/bounced/complained
    here already, or recorded as such from the file's status column);
    suppressed: forgotten addresses (GDPR), not stored at all.
    """

    path: Path
    source: str
    dry_run: bool = False
    encoding: str = ""
    delimiter: str = ","
    rows: int = 0
    imported: int = 0
    updated: int = 0
    unchanged: int = 0
    duplicates: int = 0
    rejected: int = 0
    kept_unsubscribed: int = 0
    suppressed: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    rejects_path: Path | None = None

    def reject(self, line: int, value: str, reason: str) -> None:
        self.rejected += 1
        self.reasons[reason] += 1
        if len(self.examples) < 10:
            self.examples.append(f"line {line}: {value[:60]!r}: {reason}")

    def lines(self) -> list[str]:
        """The report as printed by the CLI."""
        delim = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}[self.delimiter]
        head = "Dry run (nothing written)" if self.dry_run else "Imported"
        out = [
            f"{head}: {self.path.name} ({self.rows} rows, {self.encoding}, {delim}-separated; "
            f"source {self.source!r})",
            f"  imported           {self.imported}",
            f"  updated            {self.updated}",
            f"  unchanged          {self.unchanged}",
            f"  duplicates         {self.duplicates}",
            f"  rejected           {self.rejected}",
        ]
        out += [f"    {count} x {reason}" for reason, count in self.reasons.most_common(10)]
        out += [
            f"  kept unsubscribed  {self.kept_unsubscribed}",
            f"  suppressed         {self.suppressed}",
        ]
        if self.examples:
            out.append("Rejected rows (first ones):")
            out += [f"  {example}" for example in self.examples]
        if self.rejects_path is not None:
            out.append(f"Rejected rows written to {self.rejects_path}")
        return out


@contextlib.contextmanager
def _rejects_writer(
    path: Path | None, header: list[str]
) -> Iterator[Callable[[list[str], str], None]]:
    """A writer of rejected rows + reason; the file appears only once the file is all read."""
    if path is None:
        yield lambda cells, reason: None
        return
    part = path.with_name(path.name + ".part")
    try:
        with part.open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, lineterminator="\r\n")
            writer.writerow([*header, "reason"])
            yield lambda cells, reason: writer.writerow(
                [neutralise_cell(c) for c in (*cells, reason)]
            )
        part.replace(path)
    finally:
        part.unlink(missing_ok=True)
