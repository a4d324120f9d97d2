"""A local SMTP server (aiosmtpd) that keeps what it receives: the tests' mail sink.

It speaks real SMTP on a free loopback port, so the code under test sends through its real
client (aiosmtplib); tests read the parsed messages back. Use the ``smtp_sink`` fixture.
"""

from __future__ import annotations

import email
import email.policy
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass
class SmtpSink:
    host: str = "127.0.0.1"
    port: int = 0
    messages: list[EmailMessage] = field(default_factory=list)
    refuse: int = 0  # answer this many deliveries with a temporary failure first
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _controller: Controller | None = None

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    # aiosmtpd calls the handler method by this exact name.
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self._lock:
            if self.refuse > 0:
                self.refuse -= 1
                return "451 try again later"
            raw = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content).encode()
            parsed: Any = email.message_from_bytes(raw, policy=email.policy.default)
            self.messages.append(parsed)
        return "250 OK"

    def start(self) -> None:
        from tests.conftest import free_port

        self.port = free_port()
        self._controller = Controller(self, hostname=self.host, port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()

    def wait_for(self, count: int = 1, timeout: float = 10.0) -> list[EmailMessage]:
        """The first ``count`` messages, waiting for them to arrive (deliveries are background jobs)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.02)
        with self._lock:
            raise AssertionError(f"expected {count} emails, the sink received {len(self.messages)}")

    @staticmethod
    def text_of(message: EmailMessage) -> str:
        body = message.get_body(preferencelist=("plain",))
        assert body is not None, "the email has no text/plain part"
        return str(body.get_content())
