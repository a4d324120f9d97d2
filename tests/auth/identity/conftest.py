"""Identity fixtures: the fake OpenID provider, and auth + core over one runtime with Google
sign-in configured against it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from aihub.config import Settings
from tests.auth.identity.fake_oidc import FakeOidc
from tests.auth.identity.helpers import Env, close_env, oauth_settings, open_env
from tests.conftest import free_port
from tests.gateway.conftest import start_gateway, upstreams  # noqa: F401 - the gateway test's fixtures


@pytest.fixture(scope="session")
def provider_keys() -> tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]:
    """The provider's key, and another one nobody published."""
    return (
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    )


@pytest.fixture
async def google(provider_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]) -> AsyncIterator[FakeOidc]:
    server = FakeOidc(free_port(), key=provider_keys[0])
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def env(settings: Settings, google: FakeOidc) -> AsyncIterator[Env]:
    opened = await open_env(oauth_settings(settings, google), google)
    yield opened
    await close_env(opened)
