"""The email sender against a real SMTP server (aiosmtpd), and the log fallback."""

from __future__ import annotations

from typing import Any

import pytest

from aihub.config import Settings
from aihub.kit.email import Email, EmailDeliveryError, LogMailer, SmtpMailer, build_mailer


async def test_smtp_delivery_reaches_the_sink(smtp_sink: Any) -> None:
    mailer = build_mailer(Settings(env="test", smtp_url=smtp_sink.url, email_from="aihub <ops@example.com>"))
    assert isinstance(mailer, SmtpMailer)
    await mailer.send(Email(to="ada@example.com", subject="Hello", text="token: abc123", html="<p>abc123</p>"))
    (message,) = smtp_sink.wait_for(1)
    assert message["To"] == "ada@example.com"
    assert message["From"] == "aihub <ops@example.com>"
    assert message["Subject"] == "Hello"
    assert "token: abc123" in smtp_sink.text_of(message)


async def test_smtp_refusal_raises_a_delivery_error(smtp_sink: Any) -> None:
    smtp_sink.refuse = 1
    mailer = build_mailer(Settings(env="test", smtp_url=smtp_sink.url))
    with pytest.raises(EmailDeliveryError):
        await mailer.send(Email(to="ada@example.com", subject="Hello", text="x"))
    await mailer.send(Email(to="ada@example.com", subject="Hello", text="x"))  # the retry goes through
    assert len(smtp_sink.wait_for(1)) == 1


async def test_unreachable_server_raises_a_delivery_error() -> None:
    from tests.conftest import free_port

    mailer = build_mailer(Settings(env="test", smtp_url=f"smtp://127.0.0.1:{free_port()}", smtp_timeout_seconds=2))
    with pytest.raises(EmailDeliveryError):
        await mailer.send(Email(to="ada@example.com", subject="Hello", text="x"))


async def test_without_smtp_the_email_is_logged(capsys: pytest.CaptureFixture[str]) -> None:
    mailer = build_mailer(Settings(env="test"))
    assert isinstance(mailer, LogMailer)
    await mailer.send(Email(to="ada@example.com", subject="Verify", text="open http://x/verify?t=tok"))
    assert "tok" in capsys.readouterr().out


def test_smtp_url_parsing() -> None:
    mailer = build_mailer(Settings(env="test", smtp_url="smtps://user%40x:p%3Ass@mail.example.com"))
    assert isinstance(mailer, SmtpMailer)
    assert (mailer.host, mailer.port, mailer.use_tls) == ("mail.example.com", 465, True)
    assert (mailer.username, mailer.password) == ("user@x", "p:ss")
    with pytest.raises(ValueError, match="smtp://"):
        Settings(env="test", smtp_url="http://mail")
