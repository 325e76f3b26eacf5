"""PeopleForce webhook signatures: `X-PeopleForce-Signature: sha256=<hex HMAC-SHA256 of the raw body>`.

Always sign and verify the exact bytes received, before any JSON parsing: re-serialising
changes whitespace, key order or escapes and breaks the signature.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "x-peopleforce-signature"
_PREFIX = "sha256="


def sign(secret: str, raw_body: bytes) -> str:
    """The header value PeopleForce sends for this body: `sha256=` + lowercase hex digest."""
    digest = hmac.new(secret.encode("utf-8"), raw_body, hashlib.sha256).hexdigest()
    return _PREFIX + digest


def verify(secret: str, raw_body: bytes, header_value: str | None) -> bool:
    """True when `header_value` is the signature of `raw_body` under `secret`.

    Constant-time; the hex digest is compared case-insensitively; a missing or malformed header
    is simply False.
    """
    if not header_value:
        return False
    candidate = header_value.strip()
    if candidate[: len(_PREFIX)].lower() != _PREFIX:
        return False
    expected = sign(secret, raw_body)
    # compare_digest needs ASCII for str; a non-ASCII header cannot be a valid signature.
    if not candidate.isascii():
        return False
    return hmac.compare_digest(expected, _PREFIX + candidate[len(_PREFIX) :].lower())
