"""A local SMTP server for tests: it accepts every message and keeps it.

Python 3.11 has no ``smtpd`` and aiosmtpd is not in the pinned stack, so this speaks the
few commands an SMTP client sends (EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT) on
127.0.0.1, without TLS or authentication. Enough for Airflow's SMTP provider with a
connection whose extra says ``disable_tls`` and ``disable_ssl``.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import threading
import time
from email.message import EmailMessage


class SmtpSink:
    """Receives mail on 127.0.0.1 in a background thread; ``messages`` holds what arrived."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def __enter__(self) -> SmtpSink:
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._session, "127.0.0.1", 0), self._loop
        )
        self._server = started.result(timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def wait_for(self, count: int, timeout: float) -> list[EmailMessage]:
        """The messages once ``count`` have arrived; raises TimeoutError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.messages)} of {count} mail(s) after {timeout} s")
            time.sleep(0.5)
        return list(self.messages)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def reply(line: str) -> None:
            writer.write(line.encode("ascii") + b"\r\n")

        reply("220 127.0.0.1 test sink")
        try:
            while line := await reader.readline():
                command = line[:4].upper()
                if command == b"EHLO":
                    reply("250-127.0.0.1")
                    reply("250 8BITMIME")
                elif command in (b"HELO", b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                    reply("250 OK")
                elif command == b"DATA":
                    reply("354 end with <CRLF>.<CRLF>")
                    await writer.drain()
                    self.messages.append(await self._read_message(reader))
                    reply("250 OK")
                elif command == b"QUIT":
                    reply("221 bye")
                    break
                else:
                    reply("502 not implemented")
                await writer.drain()
        finally:
            writer.close()

    @staticmethod
    async def _read_message(reader: asyncio.StreamReader) -> EmailMessage:
        lines = []
        while (line := await reader.readline()) not in (b".\r\n", b".\n", b""):
            lines.append(line[1:] if line.startswith(b"..") else line)  # undo dot-stuffing
        message = email.message_from_bytes(b"".join(lines), policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        return message
