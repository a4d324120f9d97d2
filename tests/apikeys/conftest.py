"""The gateway fixtures (real upstreams, real gateways on loopback) for the API-key tests."""

from tests.gateway.conftest import http, start_gateway, upstreams

__all__ = ["http", "start_gateway", "upstreams"]
