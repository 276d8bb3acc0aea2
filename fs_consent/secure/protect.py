"""Personal fields in the ledger: a keyed hash to look them up, an AEAD-sealed value to read them.

A field has a *kind* (``phone``, ``name``, ``address``, ``bsn``, ...: lower-case letters,
digits and ``_``). The kind is bound into both the hash and the seal, so a sealed phone
number cannot be passed off as a name, and equal values of different kinds hash apart.
Values are never put into log lines or exception messages.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import unicodedata

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["FieldError", "FieldProtector", "elfproef", "normalise", "normalise_phone"]

KEY_SIZE = 64
_VERSION = b"\x01"
_NONCE_SIZE = 12
_KIND = re.compile(r"[a-z][a-z0-9_]{0,31}")


class FieldError(Exception):
    """A sealed field could not be opened; the message never contains the value."""


class FieldProtector:
    """Keyed look-up hashes and AES-256-GCM sealing for personal fields.

    The 64-byte key (from keys.py) is split with HKDF-SHA256 into an HMAC key and an
    AEAD key, so neither use can leak the other.
    """

    def __init__(self, key: bytes):
        if not isinstance(key, bytes) or len(key) != KEY_SIZE:
            raise ValueError(f"the field-protection key must be {KEY_SIZE} bytes")
        self._hmac_key = _derive(key, b"fs-consent field lookup v1")
        self._aead = AESGCM(_derive(key, b"fs-consent field seal v1"))

    def lookup_hash(self, kind: str, value: str) -> str:
        """HMAC-SHA256 over ``kind NUL normalise(kind, value)``, as hex.

        Stable for a key, so equal values (in any written form) find each other.
        Raises ValueError for a value that normalises to nothing (e.g. an anonymous caller).
        """
        normal = normalise(_check_kind(kind), value)
        if not normal:
            raise ValueError(f"no {kind} to hash (empty or anonymous)")
        message = kind.encode() + b"\x00" + normal.encode("utf-8")
        return hmac.new(self._hmac_key, message, hashlib.sha256).hexdigest()

    def seal(self, kind: str, value: str) -> bytes:
        """Encrypt ``value`` as written: version byte + 96-bit random nonce + ciphertext."""
        nonce = os.urandom(_NONCE_SIZE)
        aad = _check_kind(kind).encode()
        return _VERSION + nonce + self._aead.encrypt(nonce, value.encode("utf-8"), aad)

    def open(self, kind: str, token: bytes) -> str:
        """The value sealed by :meth:`seal`; FieldError if tampered, wrong kind or wrong key."""
        aad = _check_kind(kind).encode()
        if len(token) < 1 + _NONCE_SIZE + 16 or token[:1] != _VERSION:
            raise FieldError(f"sealed {kind} field is malformed or of an unknown version")
        nonce, ciphertext = token[1 : 1 + _NONCE_SIZE], token[1 + _NONCE_SIZE :]
        try:
            plaintext = self._aead.decrypt(nonce, bytes(ciphertext), aad)
        except InvalidTag:
            raise FieldError(
                f"sealed {kind} field failed authentication (tampered, other kind or other key)"
            ) from None
        return plaintext.decode("utf-8")


def _derive(key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key)


def _check_kind(kind: str) -> str:
    if not isinstance(kind, str) or not _KIND.fullmatch(kind):
        raise ValueError(f"field kind must be lower-case letters, digits and _, got {kind!r}")
    return kind


def normalise(kind: str, value: str) -> str:
    """The form a value is hashed in.

    ``phone``: :func:`normalise_phone`. ``bsn``: digits only, an 8-digit BSN padded with a
    leading 0. Other kinds: Unicode NFKC, case-folded, whitespace collapsed.
    """
    if kind == "phone":
        return normalise_phone(value)
    if kind == "bsn":
        digits = re.sub(r"[\s.\-]", "", value)
        if not re.fullmatch(r"[0-9]{8,9}", digits):
            raise ValueError("a BSN has 8 or 9 digits")
        return digits.zfill(9)
    return " ".join(unicodedata.normalize("NFKC", value).casefold().split())


_ANONYMOUS = frozenset(
    "|anonymous|unknown|private|restricted|unavailable|withheld|default|_undef_".split("|")
)
_SEPARATORS = re.compile(r"[\s\-.()/]")


def normalise_phone(number: str) -> str:
    """Normalise a caller id or written phone number to E.164 (``+31612345678``).

    Dutch national forms get +31: ``06 12345678``, ``06-12345678``, ``(040) 123 45 67``,
    ``0031 6 ...``, ``+31 (0)6 ...``, and the prefix-less ``612345678`` / ``31612345678``
    that some trunks deliver. Spaces, dashes, dots, slashes and parentheses are ignored.

    Returns ``''`` for "no number": empty, all zeros (FreeSWITCH's ``0000000000``) and the
    placeholders ``anonymous``, ``unknown``, ``private``, ``restricted``, ``unavailable``,
    ``withheld``, ``default``, ``_undef_``. Callers treat ``''`` as an unknown caller.

    Short numbers without a prefix (up to 8 digits: internal extensions, ``14 040``) are
    returned as their digits: stable for matching, but not E.164.

    Raises ValueError (without the number in the message) for anything else.
    """
    text = number.strip()
    if text.lower() in _ANONYMOUS:
        return ""
    text = _SEPARATORS.sub("", text.replace("(0)", ""))
    if text and set(text) == {"0"}:
        return ""
    if text.startswith("+"):
        international = text[1:]
    elif text.startswith("00"):
        international = text[2:]
    elif text.startswith("0"):
        international = "31" + text[1:]
        if not 7 <= len(text) - 1 <= 10:
            raise ValueError("not a recognisable phone number (wrong length)")
    elif text.isascii() and text.isdigit() and len(text) == 9:
        international = "31" + text
    elif text.isascii() and text.isdigit() and len(text) == 11 and text.startswith("31"):
        international = text
    elif text.isascii() and text.isdigit() and len(text) <= 8:
        return text
    else:
        raise ValueError("not a recognisable phone number")
    if not (international.isascii() and international.isdigit()):
        raise ValueError("not a recognisable phone number (unexpected characters)")
    if international.startswith("310"):  # "+31 06...": the trunk prefix written after +31
        international = "31" + international[2:].lstrip("0")
    if international.startswith("0") or not 7 <= len(international) <= 15:
        raise ValueError("not a recognisable phone number (not E.164)")
    return "+" + international


_BSN_WEIGHTS = (9, 8, 7, 6, 5, 4, 3, 2, -1)


def elfproef(bsn: str) -> bool:
    """The BSN 11-check: 9 digits, sum(digit * weight) with weights 9..2, -1 divisible by 11.

    ``000000000`` fails. Pad an 8-digit BSN with a leading 0 before checking.
    """
    if not (isinstance(bsn, str) and len(bsn) == 9 and bsn.isascii() and bsn.isdigit()):
        return False
    if bsn == "000000000":
        return False
    return sum(int(d) * w for d, w in zip(bsn, _BSN_WEIGHTS)) % 11 == 0
