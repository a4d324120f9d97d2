"""Payments and webhook settings: validation and defaults."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from aihub.config import Settings
from aihub.core.webhooks.service import private_allowed


def test_stripe_api_base_must_be_http() -> None:
    with pytest.raises(ValidationError, match="stripe_api_base"):
        Settings(stripe_api_base="ftp://stripe.example")
    assert Settings(stripe_api_base="http://127.0.0.1:9/").stripe_api_base == "http://127.0.0.1:9"
    assert Settings().stripe_api_base == "https://api.stripe.com"


def test_secrets_do_not_print() -> None:
    settings = Settings(stripe_api_key="sk_live_secret", stripe_webhook_secret="whsec_secret")
    assert "sk_live_secret" not in repr(settings)
    assert "whsec_secret" not in repr(settings)


def test_private_webhook_addresses_default_by_environment() -> None:
    assert private_allowed(Settings(env="development"))
    assert private_allowed(Settings(env="test"))
    assert not private_allowed(Settings(env="production", jwt_secret="x" * 40))
    assert private_allowed(Settings(env="production", jwt_secret="x" * 40, webhook_allow_private_addresses=True))
    assert not private_allowed(Settings(env="test", webhook_allow_private_addresses=False))
