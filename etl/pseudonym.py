"""Pseudonyms for rows that may not carry a fødselsnummer (a NO_FNR reservation).

A pseudonym is HMAC-SHA256 over the register code and the number, keyed with a secret that
only the delivery system holds (LEVERANSE_PSEUDONYM_KEY). The same key, register and person
always give the same pseudonym, so a register can follow a person across deliveries; two
registers get different pseudonyms for one person, so they cannot link their data; and
without the key the pseudonym reveals nothing of the number (a bare hash of an 11-digit
number could be reversed by trying them all).
"""

from __future__ import annotations

import hashlib
import hmac
import os

KEY_VARIABLE = "LEVERANSE_PSEUDONYM_KEY"
MIN_KEY_BYTES = 32


class PseudonymKeyMissing(RuntimeError):
    """A delivery must pseudonymise, but no usable key is configured."""


def key_from_environment() -> bytes:
    """The pseudonymisation key; refuse to go on without a long enough one."""
    value = os.environ.get(KEY_VARIABLE, "")
    if not value:
        raise PseudonymKeyMissing(
            f"{KEY_VARIABLE} is not set; this register's spec pseudonymises, so the delivery "
            "refuses to start without the key"
        )
    key = value.encode("utf-8")
    if len(key) < MIN_KEY_BYTES:
        raise PseudonymKeyMissing(
            f"{KEY_VARIABLE} is shorter than {MIN_KEY_BYTES} bytes; use a random secret "
            "(for example: python -c 'import secrets; print(secrets.token_hex(32))')"
        )
    return key


class Pseudonymiser:
    """Pseudonyms of one register under one key."""

    def __init__(self, key: bytes, register: str) -> None:
        self._key = key
        self._prefix = register.encode("ascii") + b"\x1f"

    def __call__(self, fnr: str) -> str:
        return hmac.new(self._key, self._prefix + fnr.encode("ascii"), hashlib.sha256).hexdigest()
