"""argon2id password hashing, run off the event loop (each hash costs tens of milliseconds)."""

from __future__ import annotations

import anyio.to_thread
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from prometheus_client import Counter

# RFC 9106's second recommended option (64 MiB, 3 passes) costs ~60 ms per hash on this box's
# cores; 19 MiB / 2 passes (OWASP's baseline) keeps login near 20 ms while staying memory-hard.
_HASHER = PasswordHasher(time_cost=2, memory_cost=19_456, parallelism=1)
# A fixed hash to verify against when the account does not exist, so both cases cost the same.
_DUMMY = _HASHER.hash("aihub-timing-equaliser")
# Counted by whether an account stood behind the attempt: the two must grow together under an
# enumeration attack (each pays one argon2 verification), and the rate is login CPU spent.
VERIFICATIONS = Counter(
    "aihub_password_verifications_total",
    "argon2 password verifications run, by whether the account existed",
    ["account"],
)


async def hash_password(password: str) -> str:
    return await anyio.to_thread.run_sync(_HASHER.hash, password)


def _verify(stored: str | None, password: str) -> bool:
    VERIFICATIONS.labels(account="known" if stored is not None else "unknown").inc()
    try:
        return _HASHER.verify(stored or _DUMMY, password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


async def verify_password(stored: str | None, password: str) -> bool:
    return await anyio.to_thread.run_sync(_verify, stored, password)


def needs_rehash(stored: str) -> bool:
    return _HASHER.check_needs_rehash(stored)
