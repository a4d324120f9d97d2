"""The contract tests start a real gateway in front of real core and auth servers: they reuse
the gateway's fixtures (fake upstreams for the groups not under test, the gateway factory)."""

from tests.gateway.conftest import http, start_gateway, upstreams  # noqa: F401
