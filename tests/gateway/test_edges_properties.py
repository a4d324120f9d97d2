"""Property tests for the two validators every request passes: the path normaliser and the
request-ID check (issue 13). Examples are generated; the properties hold for all of them."""

from __future__ import annotations

import re
import urllib.parse

from hypothesis import example, given, settings
from hypothesis import strategies as st

from aihub.config import Settings
from aihub.gateway.edges import BadPath, normalise_path
from aihub.gateway.routing import Route, RouteTable, default_table
from aihub.kit.middleware import pick_request_id

UNRESERVED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
PATH_CHARS = UNRESERVED + "!$&'()*+,;=:@/"
_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")

# Segments from the characters a path may hold, percent-encodings of anything, and the
# troublemakers: dots, encoded dots, slashes, backslashes and NUL.
_atom = st.one_of(
    st.sampled_from(list(PATH_CHARS)),
    st.integers(0, 255).map(lambda b: f"%{b:02x}"),
    st.integers(0, 255).map(lambda b: f"%{b:02X}"),
    st.sampled_from([".", "..", "%2e", "%2E%2e", "%2f", "%5C", "%00", "\\", " ", "%", "%g1", "\u00e9"]),
)
paths = st.lists(st.lists(_atom, max_size=8).map("".join), max_size=6).map(lambda segments: "/" + "/".join(segments))


def _decoded(path: str) -> bytes:
    return urllib.parse.unquote_to_bytes(path)


@settings(deadline=None)  # a shared CI machine must not turn a slow example into a failure
@given(paths)
@example("/api/auth/%6cogin")
@example("/api/users/%2e%2e/auth")
@example("/a/.well-known/%7E")
def test_normalising_is_idempotent_and_keeps_the_meaning(path: str) -> None:
    try:
        normal = normalise_path(path)
    except BadPath:
        return  # refused: the only failure it may have
    assert normalise_path(normal) == normal
    assert _decoded(normal) == _decoded(path)  # the same resource for any RFC 3986 decoder
    assert set(_PERCENT.sub("", normal)) <= set(PATH_CHARS)
    for encoded in _PERCENT.findall(normal):
        assert encoded == encoded.upper()
        assert chr(int(encoded[1:], 16)) not in UNRESERVED
    segments = normal.split("/")
    assert "." not in segments and ".." not in segments
    decoded = _decoded(normal)
    assert b"\\" not in decoded and b"\x00" not in decoded
    # Whatever "/" the decoded path holds, the normal form holds literally: splitting on "/"
    # before or after decoding gives the same segments, so route prefixes mean one thing.
    assert decoded.count(b"/") == normal.count("/")


@settings(deadline=None)  # a shared CI machine must not turn a slow example into a failure
@given(paths)
def test_a_refused_path_has_a_reason(path: str) -> None:
    try:
        normalise_path(path)
    except BadPath:
        decoded = _decoded(path)
        segments = [urllib.parse.unquote(s) for s in path.split("/")]
        assert (
            any(c not in PATH_CHARS + "%" for c in path)
            or re.search(r"%(?![0-9A-Fa-f]{2})", path) is not None
            or any(s in (".", "..") for s in segments)
            or b"\\" in decoded
            or b"\x00" in decoded
            or decoded.count(b"/") != path.count("/")
        ), path


@settings(deadline=None)  # a shared CI machine must not turn a slow example into a failure
@given(
    st.text(UNRESERVED.replace("~", ""), min_size=1, max_size=128).filter(
        lambda s: re.fullmatch(r"[A-Za-z0-9._-]+", s) is not None
    )
)
def test_a_valid_request_id_is_kept(value: str) -> None:
    assert pick_request_id(value) == value
    assert pick_request_id(value.encode()) == value


@settings(deadline=None)  # a shared CI machine must not turn a slow example into a failure
@given(st.one_of(st.none(), st.text(max_size=300), st.binary(max_size=300)))
@example("abc\n")
@example("caf\u00e9")
@example(b"\xff")
@example("x" * 129)
def test_any_request_id_comes_out_safe_to_echo(value: str | bytes | None) -> None:
    chosen = pick_request_id(value)
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,128}", chosen)
    chosen.encode("ascii")  # a header value and a log field, whatever came in
    if chosen != value and (not isinstance(value, bytes) or chosen.encode() != value):
        assert re.fullmatch(r"[0-9a-f]{32}", chosen)  # replaced by a generated one


_DEFAULT = default_table(Settings(env="test"))
TABLES = (
    _DEFAULT,
    RouteTable((*_DEFAULT.routes, Route("/api", "core"), Route("/", "core", name="root")), _DEFAULT.upstreams),
)
_segments = st.sampled_from(["api", "auth", "login", "users", "me", "sora", "x", "", ".well-known", "promo-codes"])


@settings(deadline=None)  # a shared CI machine must not turn a slow example into a failure
@given(st.lists(_segments, min_size=0, max_size=5).map(lambda s: "/" + "/".join(s)))
@example("/")
@example("/api")
@example("/api/auth")
@example("/api/authx/login")
def test_the_indexed_route_match_is_the_longest_prefix_match(path: str) -> None:
    for routes in TABLES:
        ordered = sorted(routes.routes, key=lambda r: len(r.prefix), reverse=True)
        expected = next(
            (
                r
                for r in ordered
                if path.startswith(r.prefix) and (len(path) == len(r.prefix) or path[len(r.prefix)] == "/")
            ),
            None,
        )
        assert routes.match(path) == expected
