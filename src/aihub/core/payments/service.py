"""Payments: credit packages, checkouts, and what the provider's events do to the ledger.

Money moves only through the credits service (``grant`` and ``deduct``), in the transaction
that records the event. A paid checkout grants once, guarded twice: the provider's event id
is recorded first (a redelivery stops there) and the payment moves pending → paid in one
conditional UPDATE (another event for the same session stops there). What is granted is the
snapshot taken at checkout, whatever happened to the package since.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence

import structlog

from aihub.core.audit import service as audit
from aihub.core.credits import service as credits
from aihub.core.notifications import jobs as notification_jobs
from aihub.core.payments import repository as repo
from aihub.core.payments.provider import CheckoutRequest, Event, Provider
from aihub.core.payments.schemas import CheckoutOut, PackageIn, PackageOut, PaymentOut
from aihub.core.webhooks import jobs as _webhook_jobs  # noqa: F401  (registers the delivery job)
from aihub.core.webhooks import service as webhooks
from aihub.kit.db import Tx, utcnow
from aihub.kit.errors import Conflict, NotFound
from aihub.kit.pagination import Paged, PageParams, paged
from aihub.kit.runtime import Runtime
from aihub.models import CreditPackage, Payment

log = structlog.get_logger("aihub.payments")


class PackageNotFound(NotFound):
    code, message = "PACKAGE_NOT_FOUND", "No such credit package"


class PackageInactive(Conflict):
    code, message = "PACKAGE_INACTIVE", "This credit package is not on sale"


class PaymentNotFound(NotFound):
    code, message = "PAYMENT_NOT_FOUND", "No such payment"


# ------------------------------------------------------------------------------ packages


async def list_packages(tx: Tx, *, active_only: bool = True) -> Sequence[CreditPackage]:
    return await repo.list_packages(tx.session, active_only=active_only)


async def put_package(tx: Tx, package_id: str, terms: PackageIn) -> tuple[PackageOut, bool]:
    """Create or replace; concurrent PUTs of one new id make one row (no unique-key error)."""
    now = utcnow()
    created = await repo.insert_package(tx.session, package_id, terms, now)
    row = await repo.get_package_for_update(tx.session, package_id)
    assert row is not None, "inserted or already there, and never deleted while locked"
    before = None if created else PackageOut.read(row).snapshot()
    if not created:
        for name, value in terms.model_dump().items():
            setattr(row, name, value)
        row.updated_at = now
        await tx.session.flush()
    after = PackageOut.read(row)
    audit.record(tx, "payments.package.put", "credit_package", package_id, before=before, after=after.snapshot())
    return after, created


async def delete_package(tx: Tx, package_id: str) -> None:
    """Payments keep their own snapshot, so a package sold before can be removed."""
    row = await repo.get_package(tx.session, package_id)
    if row is None:
        raise PackageNotFound
    before = PackageOut.read(row).snapshot()
    tx.session.expunge(row)
    await repo.delete_package(tx.session, package_id)
    audit.record(tx, "payments.package.delete", "credit_package", package_id, before=before)


# ------------------------------------------------------------------------------ payments


def payment_out(row: Payment) -> PaymentOut:
    """A payment as the API shows it: the checkout URL only while it can still be paid."""
    return PaymentOut.read(row, checkout_url=_checkout_url(row))


def _checkout_url(row: Payment) -> str | None:
    return row.checkout_url if row.status == "pending" else None


async def checkout(
    tx: Tx,
    provider: Provider,
    user_id: uuid.UUID,
    email: str | None,
    package_id: str,
    success_url: str,
    cancel_url: str,
) -> CheckoutOut:
    """A pending payment with the package's terms as they are now, and its hosted checkout.

    The provider call carries the payment's id as its idempotency key, so the library's own
    retries never open two sessions for one payment.
    """
    package = await repo.get_package(tx.session, package_id)
    if package is None:
        raise PackageNotFound
    if not package.active:
        raise PackageInactive
    now = utcnow()
    payment = Payment(
        id=uuid.uuid4(),
        user_id=user_id,
        provider=provider.name,
        package_id=package.id,
        credits=package.credits,
        amount=package.amount,
        currency=package.currency,
        status="pending",
        refunded_credits=0,
        refunded_amount=0,
        refund_shortfall=0,
        created_at=now,
        updated_at=now,
    )
    session = await provider.create_checkout(
        CheckoutRequest(
            payment_id=payment.id,
            user_id=user_id,
            email=email,
            package_id=package.id,
            package_name=package.name,
            credits=package.credits,
            amount=package.amount,
            currency=package.currency,
            success_url=success_url,
            cancel_url=cancel_url,
        )
    )
    payment.provider_session_id = session.id
    payment.checkout_url = session.url
    tx.session.add(payment)
    await tx.session.flush()
    audit.record(
        tx,
        "payments.checkout",
        "payment",
        payment.id,
        after={"packageId": package.id, "credits": package.credits, "amount": package.amount, "sessionId": session.id},
    )
    return CheckoutOut.read(payment, checkout_url=_checkout_url(payment), url=session.url)


async def get_payment(tx: Tx, payment_id: uuid.UUID) -> Payment:
    row = await repo.get_payment(tx.session, payment_id)
    if row is None:
        raise PaymentNotFound
    return row


async def list_payments(
    tx: Tx,
    params: PageParams,
    *,
    user_id: uuid.UUID | None,
    status: str | None = None,
    package_id: str | None = None,
    created_from: dt.datetime | None = None,
    created_to: dt.datetime | None = None,
) -> Paged[PaymentOut]:
    stmt = repo.search(
        params,
        user_id=user_id,
        status=status,
        package_id=package_id,
        created_from=created_from,
        created_to=created_to,
    )
    page = paged(await repo.fetch(tx.session, stmt), params, lambda r: (r.created_at, r.id))
    return Paged([payment_out(row) for row in page.items], page.next_cursor)


# ------------------------------------------------------------------------------ provider events


async def handle_event(tx: Tx, runtime: Runtime, provider: str, event: Event) -> str:
    """Apply one verified provider event; returns what it did (also stored with the event)."""
    event_id, kind = event.id[:255], event.type[:100]
    if not await repo.record_event(tx.session, provider, event_id, kind, event.recorded, utcnow()):
        return "duplicate"
    payment_id: uuid.UUID | None = None
    if kind in ("checkout.session.completed", "checkout.session.async_payment_succeeded"):
        outcome, payment_id = await _session_paid(tx, runtime, provider, event)
    elif kind in ("checkout.session.expired", "checkout.session.async_payment_failed"):
        outcome, payment_id = await _session_failed(tx, provider, event)
    elif kind == "charge.refunded":
        outcome, payment_id = await _charge_refunded(tx, runtime, provider, event)
    else:
        outcome = "ignored"
    await repo.set_event_outcome(tx.session, provider, event_id, outcome, payment_id)
    log.info("payments.event", provider=provider, event_id=event_id, type=kind, outcome=outcome)
    return outcome


async def owner_of(tx: Tx, provider: str, event: Event) -> uuid.UUID | None:
    """The user whose account ``event`` may move (None: none): read before the ledger engine
    takes its locks, which are the account's first and then the payment's (an owner never changes)."""
    kind = event.type[:100]
    payment: Payment | None = None
    if kind == "charge.refunded":
        intent = event.payment_intent
        payment = await repo.by_provider_payment(tx.session, provider, intent) if intent else None
    elif kind.startswith("checkout.session."):
        session_id = event.object_id
        payment = await repo.by_session(tx.session, provider, session_id) if session_id else None
    return payment.user_id if payment is not None else None


async def _session_paid(tx: Tx, runtime: Runtime, provider: str, event: Event) -> tuple[str, uuid.UUID | None]:
    session_id = event.object_id
    if session_id is None:
        return "unmatched", None
    if not event.paid:
        return "not_paid", None  # async methods: async_payment_succeeded follows
    payment = await repo.by_session(tx.session, provider, session_id)
    if payment is None:
        log.warning("payments.unmatched_session", provider=provider, session_id=session_id)
        return "unmatched", None
    now = utcnow()
    if not await repo.mark_paid(tx.session, payment.id, event.payment_intent, now):
        return "already_paid", payment.id
    txn = await credits.grant(
        tx,
        payment.user_id,
        payment.credits,
        reason="purchase",
        metadata={"paymentId": str(payment.id), "provider": provider, "sessionId": session_id},
    )
    await repo.update_payment(tx.session, payment.id, transaction_id=txn.id)
    audit.record(
        tx,
        "payments.paid",
        "payment",
        payment.id,
        before={"status": "pending"},
        after={"status": "paid", "credits": payment.credits, "transactionId": str(txn.id)},
    )
    await webhooks.emit(
        tx,
        runtime,
        "payment.succeeded",
        {
            "paymentId": str(payment.id),
            "userId": str(payment.user_id),
            "packageId": payment.package_id,
            "credits": payment.credits,
            "amount": payment.amount,
            "currency": payment.currency,
            "transactionId": str(txn.id),
        },
    )
    return "granted", payment.id


async def _session_failed(tx: Tx, provider: str, event: Event) -> tuple[str, uuid.UUID | None]:
    session_id = event.object_id
    payment = await repo.by_session(tx.session, provider, session_id) if session_id else None
    if payment is None:
        return "unmatched", None
    if not await repo.mark_failed(tx.session, payment.id, utcnow()):
        return "ignored", payment.id
    audit.record(tx, "payments.failed", "payment", payment.id, before={"status": "pending"}, after={"status": "failed"})
    return "failed", payment.id


async def _take_back(tx: Tx, runtime: Runtime, payment: Payment, wanted: int) -> int:
    """Debit up to ``wanted`` credits of a refunded purchase; what was already spent stays spent
    (returned short of ``wanted``). Each try is the ledger's own conditional debit."""
    meta = {"paymentId": str(payment.id), "kind": "purchase_refund"}
    policy = notification_jobs.policy(runtime)
    try:
        await credits.deduct(tx, payment.user_id, wanted, reason="refund", metadata=meta, policy=policy)
        return wanted
    except credits.InsufficientCredits as short:
        available = int((short.details or {}).get("available", 0))
    if available <= 0:
        return 0
    try:
        await credits.deduct(tx, payment.user_id, available, reason="refund", metadata=meta, policy=policy)
        return available
    except credits.InsufficientCredits:
        return 0  # spent in the meantime: all of it is a shortfall


async def _charge_refunded(tx: Tx, runtime: Runtime, provider: str, event: Event) -> tuple[str, uuid.UUID | None]:
    intent = event.payment_intent
    payment = await repo.by_provider_payment(tx.session, provider, intent, for_update=True) if intent else None
    if payment is None:
        return "unmatched", None
    if payment.status not in ("paid", "refunded"):
        return "ignored", payment.id
    sent = event.amount_refunded
    if sent is None:
        return "ignored", payment.id
    refunded_amount = min(sent, payment.amount)
    # The refunded share of what was sold, rounded down: a partial refund never takes back
    # more than was paid for. Cumulative: Stripe's amount_refunded is the running total.
    target = payment.credits * refunded_amount // payment.amount
    wanted = target - payment.refunded_credits
    if wanted <= 0 and refunded_amount <= payment.refunded_amount:
        return "already_refunded", payment.id
    taken = await _take_back(tx, runtime, payment, wanted) if wanted > 0 else 0
    status = "refunded" if refunded_amount >= payment.amount else payment.status
    shortfall = payment.refund_shortfall + max(wanted, 0) - taken
    before = {"status": payment.status, "refundedCredits": payment.refunded_credits}
    await repo.update_payment(
        tx.session,
        payment.id,
        status=status,
        refunded_credits=max(target, payment.refunded_credits),
        refunded_amount=refunded_amount,
        refund_shortfall=shortfall,
        updated_at=utcnow(),
    )
    audit.record(
        tx,
        "payments.refunded",
        "payment",
        payment.id,
        before=before,
        after={"status": status, "refundedCredits": target, "takenBack": taken, "shortfall": shortfall},
    )
    await webhooks.emit(
        tx,
        runtime,
        "payment.refunded",
        {
            "paymentId": str(payment.id),
            "userId": str(payment.user_id),
            "refundedAmount": refunded_amount,
            "amount": payment.amount,
            "currency": payment.currency,
            "creditsTakenBack": taken,
            "creditsShortfall": max(wanted, 0) - taken,
        },
    )
    return "refunded", payment.id


async def purchases(tx: Tx, user_id: uuid.UUID, start: dt.datetime | None, end: dt.datetime | None) -> list[Payment]:
    """The billing report's purchases block (its rows read by the report's schema)."""
    return list(await repo.purchases(tx.session, user_id, start, end))


async def purchases_by_user(
    tx: Tx, start: dt.datetime | None, end: dt.datetime | None
) -> dict[uuid.UUID, list[Payment]]:
    """Every user's purchases block, for the all-users export (one query)."""
    found: dict[uuid.UUID, list[Payment]] = {}
    for p in await repo.purchases(tx.session, None, start, end):
        found.setdefault(p.user_id, []).append(p)
    return found
