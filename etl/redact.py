"""Keep identity numbers out of logs and error messages, whatever produced them.

The code never formats an identity number into a message, but a database driver may (a
constraint violation quotes the row). Every log record and every one-line error the command
line prints passes through here, and any run of 11 digits becomes ``<11 digits>``.
"""

from __future__ import annotations

import logging
import re

_ELEVEN_DIGITS = re.compile(r"(?<!\d)\d{6}[ -]?\d{5}(?!\d)")


def redact(text: str) -> str:
    """The text with anything that looks like an identity number replaced."""
    return _ELEVEN_DIGITS.sub("<11 digits>", text)


def one_line(exc: BaseException) -> str:
    """An exception as one redacted line, without the SQL and parameters SQLAlchemy appends."""
    original = getattr(exc, "orig", None)
    text = str(original if original is not None else exc) or type(exc).__name__
    first = next((line.strip() for line in text.splitlines() if line.strip()), text)
    return redact(first)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts the rendered message of every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info:
            # A traceback quotes exception texts; render it here so it is redacted too.
            message += "\n" + logging.Formatter().formatException(record.exc_info)
            record.exc_info, record.exc_text = None, None
        cleaned = redact(message)
        if cleaned != record.msg or record.args:
            record.msg, record.args = cleaned, None
        return True


def install() -> None:
    """Redact every record that reaches the root logger's handlers."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
