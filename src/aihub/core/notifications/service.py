"""Low-balance alerts: an account's thresholds, which of them a balance change crossed, the email.

The crossing itself is decided from the two values the ledger's conditional UPDATE returned
(available before and after one change), so it is exact under any concurrency: of many
debits racing past a threshold, exactly one goes from ≥ it to below it.
"""

from __future__ import annotations

import uuid

from aihub.core.audit import service as audit
from aihub.core.credits import service as credits
from aihub.core.notifications import repository as repo
from aihub.core.notifications.schemas import AlertsOut
from aihub.kit.db import Tx, utcnow
from aihub.kit.email import Email


def crossed(thresholds: list[int], before: int, after: int) -> list[int]:
    """The thresholds that one change from ``before`` to ``after`` crossed downwards."""
    return sorted((t for t in thresholds if before >= t > after), reverse=True)


async def get_alerts(tx: Tx, user_id: uuid.UUID, default_threshold: int) -> AlertsOut:
    await credits.account(tx, user_id)  # 404 ACCOUNT_NOT_FOUND for a user without an account
    row = await repo.get_settings(tx.session, user_id)
    if row is None:
        return AlertsOut(
            user_id=user_id,
            thresholds=[default_threshold] if default_threshold > 0 else [],
            email=False,
            inherited=True,
        )
    return AlertsOut(user_id=user_id, thresholds=list(row.thresholds), email=row.email, inherited=False)


async def put_alerts(tx: Tx, user_id: uuid.UUID, thresholds: list[int], email: bool) -> AlertsOut:
    """Replace the account's own thresholds (an empty list: no low-balance alerts at all).

    The account row is updated first (its highest threshold), which also serialises concurrent
    PUTs of one account on PostgreSQL.
    """
    await credits.set_alert_ceiling(tx, user_id, max(thresholds, default=0))
    previous = await repo.previous_settings(tx.session, user_id)
    before = None if previous is None else {"thresholds": previous.thresholds, "email": previous.email}
    await repo.upsert_settings(tx.session, user_id, thresholds, email, utcnow())
    after = {"thresholds": thresholds, "email": email}
    audit.record(tx, "credits.alerts.put", "credit_account", user_id, before=before, after=after)
    return AlertsOut(user_id=user_id, thresholds=thresholds, email=email, inherited=False)


async def thresholds_of(tx: Tx, event: credits.LowBalance) -> tuple[list[int], bool]:
    """(thresholds, email opt-in) that apply to the account of ``event``."""
    row = await repo.get_settings(tx.session, event.user_id)
    if not event.custom:
        return [event.threshold], bool(row is not None and row.email)
    if row is None:  # a threshold set on the account directly, without settings: it alone
        return [event.threshold], False
    return list(row.thresholds), row.email


async def email_of(tx: Tx, user_id: uuid.UUID) -> str | None:
    user = await repo.get_user(tx.session, user_id)
    if user is None or user.status != "active":
        return None
    return user.email


def low_balance_email(to: str, threshold: int, available: int, balance: int) -> Email:
    text = (
        f"Your aihub credits are running low: {available} credits are available "
        f"(balance {balance}), below your alert threshold of {threshold}.\n\n"
        "Top up to keep your requests running.\n"
    )
    return Email(to=to, subject=f"Low credit balance: {available} credits left", text=text)
