"""The per-IP signup limiter (NEWSLETTER_SIGNUP_RATE_LIMIT): the web edge's brake on list bombing.

It lives at the edge because only the web knows the visitor's IP: the core's
`request_signup` limits per mailbox (one confirmation an hour), this limits per
connection. In memory and per process: a restart forgets the counts, which is
acceptable for a brake on bots.

    RateLimiter(limit, window).allow(client_key(client_ip(request))) -> bool
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import deque
from collections.abc import Callable

from fastapi import Request


def client_ip(request: Request) -> str:
    """The visitor's IP (uvicorn applies X-Forwarded-For from trusted proxies)."""
    return request.client.host if request.client else "unknown"


def client_key(ip: str) -> str:
    """Who a signup is counted against: the IPv4 address, or the IPv6 /64 network.

    One IPv6 host holds a whole /64 (privacy addresses rotate within it), so
    counting single IPv6 addresses would not limit anyone.
    """
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{address}/64", strict=False))
    return str(address)


class RateLimiter:
    """At most `limit` hits per key in a sliding `window` (seconds); in memory, per process."""

    def __init__(
        self, limit: int, window: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        """Count one hit for `key`; False once it is over the limit."""
        now = self.clock()
        with self._lock:
            if len(self._hits) > 10_000:  # keep memory bounded under a flood
                self._prune(now)
            hits = self._hits.setdefault(key, deque())
            while hits and hits[0] <= now - self.window:
                hits.popleft()
            if len(hits) >= self.limit:
                return False
            hits.append(now)
            return True

    def _prune(self, now: float) -> None:
        for key in [k for k, v in self._hits.items() if not v or v[-1] <= now - self.window]:
            del self._hits[key]
