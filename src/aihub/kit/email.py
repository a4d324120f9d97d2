"""Outgoing email: one small interface, an SMTP sender for deployments and a log sender for the
embedded default.

Callers build an :class:`Email` and hand it to a :class:`Mailer`. Send from a background job
queued after the transaction commits (see ``kit/jobs.py``), never inside a request's unit of
work: an SMTP server that is slow or down must not hold a database transaction open, and a
rolled-back change must not have mailed anybody.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import EmailMessage
from typing import Protocol
from urllib.parse import unquote, urlsplit

import aiosmtplib
import structlog

from aihub.config import Settings

log = structlog.get_logger("aihub.email")


@dataclass(frozen=True, slots=True)
class Email:
    to: str
    subject: str
    text: str
    html: str | None = None


class EmailDeliveryError(Exception):
    """The mail server refused or could not be reached; a job may retry."""


class Mailer(Protocol):
    async def send(self, email: Email) -> None: ...


def _message(sender: str, email: Email) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = email.to
    message["Subject"] = email.subject
    message.set_content(email.text)
    if email.html is not None:
        message.add_alternative(email.html, subtype="html")
    return message


@dataclass(frozen=True, slots=True)
class SmtpMailer:
    """Delivers over SMTP with aiosmtplib: ``smtps://`` is TLS from the first byte, ``smtp://``
    upgrades with STARTTLS when the server offers it (a local sink offers nothing and gets plain)."""

    host: str
    port: int
    sender: str
    use_tls: bool = False
    username: str | None = None
    password: str | None = None
    timeout: float = 10.0

    async def send(self, email: Email) -> None:
        try:
            await aiosmtplib.send(
                _message(self.sender, email),
                hostname=self.host,
                port=self.port,
                use_tls=self.use_tls,
                start_tls=None if not self.use_tls else False,
                username=self.username,
                password=self.password,
                timeout=self.timeout,
            )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            # The message names the server's reply, never the credentials.
            raise EmailDeliveryError(f"{type(exc).__name__}: {exc}") from exc
        log.info("email_sent", to_domain=email.to.rpartition("@")[2], subject=email.subject)


@dataclass(frozen=True, slots=True)
class LogMailer:
    """The embedded default: the email is a log line, so a newcomer can follow a verification or
    reset link without a mail server. Never used when ``AIHUB_SMTP_URL`` is set."""

    sender: str

    async def send(self, email: Email) -> None:
        log.info("email_not_sent_no_smtp", to=email.to, subject=email.subject, text=email.text)


def build_mailer(settings: Settings) -> Mailer:
    if not settings.smtp_url:
        return LogMailer(sender=settings.email_from)
    parts = urlsplit(settings.smtp_url)
    tls = parts.scheme == "smtps"
    return SmtpMailer(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or (465 if tls else 25),
        sender=settings.email_from,
        use_tls=tls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        timeout=settings.smtp_timeout_seconds,
    )
