"""What a request looks like before any rule sees it: one normalised path, one valid request ID.

The gateway matches routes on the path, and core and auth decode that path again: when the
two disagree on what a path means (``/api/auth/%6cogin`` is ``/api/auth/login`` to auth, and
to a raw prefix match it is the generic ``/api/auth`` route with its weaker limit), a client
picks its rules. So the path is normalised ONCE (RFC 3986 section 6.2.2): percent-encoded
unreserved characters are decoded, other percent-encodings get upper-case hex, and anything
whose meaning differs between decoders (encoded ``/`` or ``\\``, NUL, ``.``/``..`` segments,
raw characters a path may not hold) is refused with 400. The normalised path is what routes
match and what the upstream receives.
"""

from __future__ import annotations

import string

from aihub.kit.errors import AppError

_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
# pchar (RFC 3986 section 3.3) without the percent sign, plus the segment separator.
_PATH_CHARS = _UNRESERVED | frozenset("!$&'()*+,;=:@/")
_HEX = frozenset("0123456789abcdefABCDEF")
# Decoded, these change how the path splits or ends for some decoder: never accepted encoded.
_NEVER_ENCODED = frozenset("/\\\x00")


class BadPath(AppError):
    status_code, code, message = 400, "INVALID_PATH", "The request path is malformed"


def _refuse_dot_segments(path: str) -> None:
    # "/api/users/../auth/x" would match one route here and mean another upstream.
    for segment in path.split("/"):
        if segment in (".", ".."):
            raise BadPath("The path may not contain '.' or '..' segments")


def normalise_path(raw: str) -> str:
    """The request path (no query) in normal form, or BadPath (400)."""
    if not raw.startswith("/"):
        raise BadPath("The path must start with '/'")
    if "%" not in raw:
        # The common case: nothing to decode; only the characters and segments to check.
        if not _PATH_CHARS.issuperset(raw):
            raise BadPath("The path holds characters that must be percent-encoded")
        if "/." in raw:
            _refuse_dot_segments(raw)
        return raw
    out: list[str] = []
    i, end = 0, len(raw)
    while i < end:
        char = raw[i]
        if char == "%":
            digits = raw[i + 1 : i + 3]
            if len(digits) != 2 or not _HEX.issuperset(digits):
                raise BadPath("The path holds a malformed percent-encoding")
            decoded = chr(int(digits, 16))
            if decoded in _NEVER_ENCODED:
                raise BadPath("The path may not hold an encoded '/', '\\' or NUL")
            out.append(decoded if decoded in _UNRESERVED else "%" + digits.upper())
            i += 3
            continue
        if char not in _PATH_CHARS:
            raise BadPath("The path holds characters that must be percent-encoded")
        out.append(char)
        i += 1
    path = "".join(out)
    _refuse_dot_segments(path)
    return path
