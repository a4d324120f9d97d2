"""Outgoing webhooks (Standard Webhooks): endpoints, the outbox of deliveries, signatures.

An event is written as one delivery row per subscribed endpoint in the transaction that
caused it (a rolled-back change emits nothing); after commit a job sends each one, and the
retry sweep (``jobs.py``) picks up whatever is due again, so a lost job or a crashed worker
only delays a delivery. Every attempt is recorded.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import secrets
import uuid
from typing import Any
from urllib.parse import urlsplit

import structlog

from aihub.config import Settings
from aihub.core.audit import service as audit
from aihub.core.webhooks import repository as repo
from aihub.core.webhooks.schemas import DeliveryOut, EndpointAudit, EndpointIn, EndpointPatch, TestOut
from aihub.kit.db import Tx, utcnow
from aihub.kit.errors import AppError, NotFound
from aihub.kit.jobs import jobs_of
from aihub.kit.jsonutil import dumps
from aihub.kit.pagination import Paged, PageParams, page_of, paged
from aihub.kit.runtime import Runtime
from aihub.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint

log = structlog.get_logger("aihub.webhooks")
DELIVER_JOB = "webhooks.deliver"
TEST_EVENT = "webhook.test"


class WebhookNotFound(NotFound):
    code, message = "WEBHOOK_NOT_FOUND", "No such webhook endpoint"


class InvalidWebhookUrl(AppError):
    status_code, code, message = 422, "INVALID_WEBHOOK_URL", "The webhook URL is not allowed"


# ------------------------------------------------------------------------------ URLs (SSRF)


def private_allowed(settings: Settings) -> bool:
    """Whether endpoints may point at loopback, private or link-local addresses.

    A webhook URL makes this server send requests on an administrator's behalf: pointed at
    127.0.0.1, 10.0.0.0/8, 169.254.169.254 (cloud metadata) and the like, it reaches services
    that trust the internal network (SSRF). Default: allowed only in development and test.
    """
    if settings.webhook_allow_private_addresses is not None:
        return settings.webhook_allow_private_addresses
    return settings.env != "production"


def is_public_ip(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def check_url(settings: Settings, url: str) -> str:
    """http(s) with a host, no credentials; a literal private address only when allowed.

    Host names are checked again when they are resolved for each attempt (``jobs.py``), so a
    name that later resolves to an internal address (DNS rebinding) is refused too.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidWebhookUrl(details=[{"field": "body.url", "message": str(exc)}]) from exc
    problem = None
    if parts.scheme not in ("http", "https"):
        problem = "only http and https URLs are allowed"
    elif not parts.hostname:
        problem = "the URL has no host"
    elif parts.username is not None or parts.password is not None:
        problem = "credentials in the URL are not allowed"
    elif port == 0:
        problem = "port 0 is not allowed"
    elif not private_allowed(settings):
        host = parts.hostname
        try:
            literal = not is_public_ip(host)
        except ValueError:
            literal = host == "localhost" or host.endswith((".localhost", ".local", ".internal"))
        if literal:
            problem = "private, loopback and link-local addresses are not allowed"
    if problem is not None:
        raise InvalidWebhookUrl(details=[{"field": "body.url", "message": problem}])
    return url


# ------------------------------------------------------------------------------ signatures


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def webhook_id(delivery_id: uuid.UUID) -> str:
    return f"msg_{delivery_id.hex}"


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` keyed by the secret's decoded bytes."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
        "user-agent": "aihub-webhooks/1",
    }


def backoff(settings: Settings, attempts: int) -> float:
    """Delay before the next attempt after ``attempts`` failed ones: doubling, capped."""
    return float(min(settings.webhook_backoff_seconds * 2 ** (attempts - 1), settings.webhook_backoff_max_seconds))


# ------------------------------------------------------------------------------ endpoints


async def create_endpoint(tx: Tx, settings: Settings, values: EndpointIn) -> WebhookEndpoint:
    """The new endpoint, its ``secret`` included (shown once: in this answer only)."""
    now = utcnow()
    row = WebhookEndpoint(
        id=uuid.uuid4(),
        url=check_url(settings, values.url),
        events=sorted(set(values.events)),
        description=values.description,
        secret=new_secret(),
        active=values.active,
        created_at=now,
        updated_at=now,
    )
    tx.session.add(row)
    await tx.session.flush()
    audit.record(tx, "webhook.create", "webhook_endpoint", row.id, after=_audited(row).snapshot())
    return row


def _audited(row: WebhookEndpoint) -> EndpointAudit:
    return EndpointAudit.read(row)


async def get_endpoint(tx: Tx, endpoint_id: uuid.UUID, *, for_update: bool = False) -> WebhookEndpoint:
    row = await repo.get_endpoint(tx.session, endpoint_id, for_update=for_update)
    if row is None:
        raise WebhookNotFound
    return row


async def list_endpoints(tx: Tx, params: PageParams) -> Paged[WebhookEndpoint]:
    return paged(await repo.list_endpoints(tx.session, params), params, lambda r: (r.created_at, r.id))


async def update_endpoint(
    tx: Tx, settings: Settings, endpoint_id: uuid.UUID, changes: EndpointPatch
) -> WebhookEndpoint:
    # Locked: concurrent changes apply one after the other (each audited against what the one
    # before left), and one racing a deletion finds the endpoint gone (404), never a 500.
    row = await get_endpoint(tx, endpoint_id, for_update=True)
    before = _audited(row).snapshot()
    if changes.url is not None:
        row.url = check_url(settings, changes.url)
    if changes.events is not None:
        row.events = sorted(set(changes.events))
    if "description" in changes.model_fields_set:
        row.description = changes.description
    if changes.active is not None:
        row.active = changes.active
    row.updated_at = utcnow()
    await tx.session.flush()
    audit.record(tx, "webhook.update", "webhook_endpoint", row.id, before=before, after=_audited(row).snapshot())
    return row


async def delete_endpoint(tx: Tx, endpoint_id: uuid.UUID) -> None:
    row = await get_endpoint(tx, endpoint_id, for_update=True)  # of concurrent deletions one deletes and audits
    before = _audited(row).snapshot()
    tx.session.expunge(row)
    if not await repo.delete_endpoint(tx.session, endpoint_id):
        raise WebhookNotFound
    audit.record(tx, "webhook.delete", "webhook_endpoint", endpoint_id, before=before)


# ------------------------------------------------------------------------------ events


def _payload(event_type: str, data: dict[str, Any], now: dt.datetime) -> str:
    return dumps({"type": event_type, "timestamp": now.isoformat().replace("+00:00", "Z"), "data": data}).decode()


def _enqueue_after_commit(tx: Tx, runtime: Runtime | None, ids: list[uuid.UUID]) -> None:
    # Without a runtime (a domain service that has none at hand) the retry sweep sends them,
    # within AIHUB_WEBHOOK_RETRY_INTERVAL_SECONDS.
    if not ids or runtime is None:
        return
    jobs = jobs_of(runtime)

    async def send() -> None:
        for delivery_id in ids:
            try:
                await jobs.enqueue(DELIVER_JOB, {"deliveryId": str(delivery_id)})
            except Exception:  # the retry sweep sends it anyway: the row is the source of truth
                log.warning("webhooks.enqueue_failed", delivery_id=str(delivery_id))

    tx.after_commit(send)


async def _deliver_to(
    tx: Tx, runtime: Runtime | None, targets: list[uuid.UUID], event_type: str, data: dict[str, Any]
) -> list[uuid.UUID]:
    now = utcnow()
    body = _payload(event_type, data, now)
    ids = [uuid.uuid4() for _ in targets]
    rows = [
        WebhookDelivery(
            id=delivery_id,
            endpoint_id=endpoint_id,
            event_type=event_type,
            payload=body,
            status="pending",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
            delivered_at=None,
        )
        for delivery_id, endpoint_id in zip(ids, targets, strict=True)
    ]
    await repo.add_deliveries(tx.session, rows)
    _enqueue_after_commit(tx, runtime, ids)
    return ids


async def emit(tx: Tx, runtime: Runtime | None, event_type: str, data: dict[str, Any]) -> int:
    """Queue ``event_type`` for every active endpoint subscribed to it, in this transaction.

    ``data`` names the user or object concerned (``userId``, ``paymentId``, …). Returns how
    many deliveries were queued.
    """
    targets = [e.id for e in await repo.active_endpoints(tx.session) if event_type in e.events]
    return len(await _deliver_to(tx, runtime, targets, event_type, data))


async def send_test(tx: Tx, runtime: Runtime, endpoint_id: uuid.UUID) -> TestOut:
    row = await get_endpoint(tx, endpoint_id)
    [delivery_id] = await _deliver_to(tx, runtime, [row.id], TEST_EVENT, {"webhookId": str(row.id)})
    return TestOut(delivery_id=delivery_id, webhook_id=webhook_id(delivery_id), status="pending")


def delivery(row: WebhookDelivery, attempt_log: list[WebhookAttempt]) -> DeliveryOut:
    """A delivery with every attempt made: ``next_attempt_at`` only while one is still due."""
    return DeliveryOut.read(
        row,
        webhook_id=webhook_id(row.id),
        next_attempt_at=row.next_attempt_at if row.status == "pending" else None,
        attempt_log=attempt_log,
    )


async def list_deliveries(tx: Tx, endpoint_id: uuid.UUID, params: PageParams) -> Paged[DeliveryOut]:
    await get_endpoint(tx, endpoint_id)
    found = await repo.list_deliveries(tx.session, endpoint_id, params)
    rows, cursor = page_of(found, params, lambda r: (r.created_at, r.id))
    logs: dict[uuid.UUID, list[WebhookAttempt]] = {}
    for attempt in await repo.attempts_of(tx.session, [r.id for r in rows]):
        logs.setdefault(attempt.delivery_id, []).append(attempt)
    return Paged([delivery(r, logs.get(r.id, [])) for r in rows], cursor)
