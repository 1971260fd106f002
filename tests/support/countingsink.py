"""A minimal SMTP sink that counts messages per recipient, for the multi-worker tests.

aiosmtpd (tests/support/smtpserver.py) keeps every message and caps near 500 msg/s;
to check that 20,000 messages arrive exactly once only the envelope matters,
so this sink answers 250 to everything (PIPELINING included), keeps no
bodies, and counts RCPT TO addresses of accepted messages. Runs its own event
loop in a thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

_EHLO = b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 104857600\r\n250 SMTPUTF8\r\n"


class CountingSink:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.copies: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="counting-sink", daemon=True)

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.copies.values())

    def start(self) -> CountingSink:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._session, self.host, 0, limit=64 * 1024 * 1024)
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 sink ESMTP\r\n")
        rcpts: list[str] = []
        try:
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb == b"EHLO":
                    writer.write(_EHLO)
                elif verb in {b"MAIL", b"RSET"}:
                    rcpts = []
                    writer.write(b"250 OK\r\n")
                elif verb == b"RCPT":
                    address = line.split(b":", 1)[1].strip().split(b" ")[0].strip(b"<>")
                    rcpts.append(address.decode("utf-8", "replace").lower())
                    writer.write(b"250 OK\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 go ahead\r\n")
                    await writer.drain()
                    await reader.readuntil(b"\r\n.\r\n")
                    with self._lock:
                        self.copies.update(rcpts)
                    rcpts = []
                    writer.write(b"250 2.0.0 queued\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    break
                else:
                    writer.write(b"250 OK\r\n")
                if not reader._buffer:  # type: ignore[attr-defined]  # private: answer pipelined commands together
                    await writer.drain()
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
