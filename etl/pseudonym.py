"""Pseudonyms for rows that may not carry a fødselsnummer (a NO_FNR reservation).

A pseudonym is HMAC-SHA256 over the register code and the number, keyed with a secret that
only the delivery system holds. The same key, register and person always give the same
pseudonym, so a register can follow a person across deliveries; two registers get different
pseudonyms for one person, so they cannot link their data; and without the key the pseudonym
reveals nothing of the number (a bare hash of an 11-digit number could be reversed by trying
them all).

The key comes from the environment variable LEVERANSE_PSEUDONYM_KEY; in Airflow's tasks,
where that is not set, from the password of the Airflow connection ``leveranse_pseudonym``
(resolved by ``etl.airflow_dag``, so that the command line never imports Airflow). Either
way it is held in memory only: no message, log line, manifest or XCom carries it, and an
error names where the key was looked for, never what was found there.
"""

from __future__ import annotations

import hashlib
import hmac
import os

KEY_VARIABLE = "LEVERANSE_PSEUDONYM_KEY"
KEY_CONNECTION = "leveranse_pseudonym"
MIN_KEY_BYTES = 32
REFUSAL = "this register's spec pseudonymises, so the delivery refuses to start without the key"


class PseudonymKeyMissing(RuntimeError):
    """A delivery must pseudonymise, but no usable key is configured."""


def checked_key(secret: str | None, source: str) -> bytes:
    """The key ``secret`` read from ``source``; refuse a missing or short one.

    Every source goes through here, so the same minimum holds wherever the key is kept.
    ``source`` names where the key was looked for; the value never goes into a message,
    since messages end up in task logs and alerts.
    """
    if not secret:
        raise PseudonymKeyMissing(f"{source} is not set; {REFUSAL}")
    key = secret.encode("utf-8")
    if len(key) < MIN_KEY_BYTES:
        raise PseudonymKeyMissing(
            f"{source} is shorter than {MIN_KEY_BYTES} bytes; use a random secret "
            "(for example: python -c 'import secrets; print(secrets.token_hex(32))')"
        )
    return key


def key_from_environment() -> bytes:
    """The pseudonymisation key from LEVERANSE_PSEUDONYM_KEY; refuse to go on without it."""
    return checked_key(os.environ.get(KEY_VARIABLE), KEY_VARIABLE)


class Pseudonymiser:
    """Pseudonyms of one register under one key."""

    def __init__(self, key: bytes, register: str) -> None:
        self._key = key
        self._prefix = register.encode("ascii") + b"\x1f"

    def __call__(self, fnr: str) -> str:
        return hmac.new(self._key, self._prefix + fnr.encode("ascii"), hashlib.sha256).hexdigest()
