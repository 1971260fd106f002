"""DKIM signing (RFC 6376, rsa-sha256, relaxed/relaxed), fast enough for bulk sends.

dkimpy signs about 100-160 messages/s per core (6-10 ms for a 30 KB message):
far below what one SMTP connection pushes. Profiled with cProfile (2048-bit
key), 72-86% of that time is its RSA private-key operation, done in pure
Python (the built-in `pow` on big integers); splitting and canonicalising the
message with regexes takes 5-9%, re-parsing the PEM key on every call 3-4%.
So the win is RSA in OpenSSL (`cryptography`), here; the key is also parsed
once per issue (`load_key`), and the message is built from byte segments that
are the same for every reader ("runs") joined by one per-reader value (the
unsubscribe URL), so the runs are canonicalised once and only the short
per-reader values per message. dkimpy stays the reference: the tests verify
every signature with it. The keys (load, generate, publish) are dkimkey.py's.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Sequence

from newsletter.mail.dkimkey import DkimKey

CRLF = b"\r\n"

#: Signed when present, in this order. RFC 8058 requires List-Unsubscribe-Post
#: to be signed with List-Unsubscribe; dkimpy's and OpenDKIM's defaults leave it out.
SIGNED_HEADERS = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "List-Archive",
    "MIME-Version",
    "Content-Type",
    "Precedence",
    "Auto-Submitted",
)
#: Listed once more in h= than they occur, so that a copy appended later breaks the signature.
OVERSIGNED_HEADERS = ("From", "Subject")

_WSP_RUN = re.compile(rb"[ \t]+")
_WSP_BEFORE_CRLF = re.compile(rb"[ \t]+\r\n")
_FOLD = re.compile(rb"\r\n(?=[ \t])")
_WSP = b" \t"


# ---- canonicalisation (RFC 6376 §3.4.2 and §3.4.4) -------------------------


def relaxed_header(name: bytes, value: bytes) -> bytes:
    """One header field, relaxed: `name:value` CRLF, unfolded, whitespace squeezed."""
    value = _WSP_RUN.sub(b" ", _FOLD.sub(b"", value)).strip(_WSP)
    return name.strip(_WSP).lower() + b":" + value + CRLF


def _relaxed_lines(data: bytes) -> bytes:
    """Relaxed body rules that act within lines; safe on a segment of a body."""
    return _WSP_RUN.sub(b" ", _WSP_BEFORE_CRLF.sub(CRLF, data))


def _strip_trailing_lines(data: bytes) -> bytes:
    """Empty lines at the end of a body are ignored; a non-empty body ends with CRLF."""
    end = len(data)
    while data.endswith(CRLF, 0, end):
        end -= 2
    return data[:end] + CRLF if end else b""


def relaxed_body(body: bytes) -> bytes:
    """The whole body, relaxed (the reference the incremental hash must match)."""
    return _strip_trailing_lines(_relaxed_lines(body))


def split_header_block(block: bytes) -> list[tuple[bytes, bytes]]:
    """`Name: value` CRLF fields (folded lines kept) -> [(name, raw value incl. folds)]."""
    fields: list[tuple[bytes, bytes]] = []
    for line in block.split(CRLF):
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + CRLF + line)
        else:
            name, _, value = line.partition(b":")
            fields.append((name, value))
    return fields


# ---- signing --------------------------------------------------------------


class MessageSigner:
    """Signs the messages of one template: everything shared is prepared once.

    A message is `dynamic header fields + static header block + CRLF + body`,
    and the body is `filler.join(runs)`: the runs are the same for every reader,
    the filler (the QP-encoded unsubscribe URL) differs. Relaxed body
    canonicalisation acts within lines, so it can be applied to each run on its
    own when the bytes at every junction are neither whitespace nor half a line
    break; that is checked here, and a message that breaks it is canonicalised
    whole (correct, only slower).
    """

    def __init__(
        self,
        key: DkimKey,
        *,
        dynamic_names: Sequence[bytes],
        static_headers: bytes,
        runs: Sequence[bytes],
    ) -> None:
        self.key = key
        self.dynamic_names = tuple(dynamic_names)
        fields: list[tuple[bytes, bytes | None]] = [(name, None) for name in self.dynamic_names]
        fields += [(n, relaxed_header(n, v)) for n, v in split_header_block(static_headers)]
        present = [name.decode("ascii").strip() for name, _ in fields]
        lowered = {name.lower() for name in present}
        names = [n for n in SIGNED_HEADERS if n.lower() in lowered]
        chosen = {n.lower() for n in names}
        for name in present:  # any other List-* header (List-Help, List-Post...)
            if name.lower().startswith("list-") and name.lower() not in chosen:
                names.append(name)
                chosen.add(name.lower())
        over = [n for n in names if n in OVERSIGNED_HEADERS or n.lower().startswith("list-")]
        self.h_names = names + over
        # what to hash for each h= entry: bottom-most unused instance (§5.4.2); a name
        # listed once more than it occurs adds nothing. int = index into dynamic values.
        self._recipe: list[bytes | int] = []
        used: set[int] = set()
        for name in self.h_names:
            for i in range(len(fields) - 1, -1, -1):
                if i not in used and fields[i][0].strip().lower() == name.lower().encode():
                    used.add(i)
                    canonical = fields[i][1]
                    self._recipe.append(i if canonical is None else canonical)
                    break
        self.runs = tuple(runs)
        self._canonical_runs = [_relaxed_lines(run) for run in self.runs]
        self._canonical_runs[-1] = _strip_trailing_lines(self._canonical_runs[-1])
        self.incremental = self._runs_are_separable()
        self._prefix = hashlib.sha256(self._canonical_runs[0])
        self._tags = (
            f"v=1; a=rsa-sha256; c=relaxed/relaxed; d={key.domain}; s={key.selector};"
        ).encode("ascii")
        self._h_tag = _fold_list(self.h_names)

    def _runs_are_separable(self) -> bool:
        inner_ends = [run[-1:] for run in self.runs[:-1]]
        inner_starts = [run[:1] for run in self.runs[1:]]
        return (
            all(end and end not in b" \t\r" for end in inner_ends)
            and all(start and start not in b" \t\n" for start in inner_starts)
            and self._canonical_runs[-1].strip(CRLF) != b""
        )

    def body_hash(self, filler: bytes) -> bytes:
        """sha256 of the relaxed body `filler.join(runs)`, reusing the shared parts."""
        if len(self.runs) == 1:
            return self._prefix.digest()
        if (
            self.incremental
            and filler
            and filler[:1] not in b" \t\r\n"
            and filler[-1:] not in b" \t\r\n"
        ):
            h = self._prefix.copy()
            canonical_filler = _relaxed_lines(filler)
            for run in self._canonical_runs[1:]:
                h.update(canonical_filler)
                h.update(run)
            return h.digest()
        return hashlib.sha256(relaxed_body(filler.join(self.runs))).digest()

    def signature(
        self, dynamic_values: Sequence[bytes], filler: bytes, *, timestamp: int | None = None
    ) -> bytes:
        """The `DKIM-Signature:` field (CRLF-terminated) to put on top of the message."""
        dynamic = [
            relaxed_header(name, value)
            for name, value in zip(self.dynamic_names, dynamic_values, strict=True)
        ]
        bh = base64.b64encode(self.body_hash(filler))
        t = int(time.time()) if timestamp is None else timestamp
        unsigned = b"".join(
            [self._tags, b"\r\n t=%d; h=" % t, self._h_tag, b";\r\n bh=", bh, b";\r\n b="]
        )
        data = b"".join(part if isinstance(part, bytes) else dynamic[part] for part in self._recipe)
        data += relaxed_header(b"DKIM-Signature", b" " + unsigned)[:-2]  # no CRLF (§3.7)
        raw = self.key.sign(data)
        return b"DKIM-Signature: " + unsigned + _fold_b64(base64.b64encode(raw)) + CRLF


def _fold_list(names: Sequence[str]) -> bytes:
    """h= value folded at colons (FWS is allowed there) to keep lines short."""
    lines: list[str] = []
    line = ""
    for number, name in enumerate(names):
        piece = name if number == len(names) - 1 else f"{name}:"
        if len(line) + len(piece) > 66 and line:
            lines.append(line)
            line = ""
        line += piece
    lines.append(line)
    return "\r\n ".join(lines).encode("ascii")


def _fold_b64(value: bytes, width: int = 72) -> bytes:
    """b= folded into short lines; verifiers drop its whitespace."""
    first = width - 4
    rest = [value[i : i + width] for i in range(first, len(value), width)]
    return CRLF.join([value[:first], *[b" " + chunk for chunk in rest]])
