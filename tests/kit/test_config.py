from __future__ import annotations

from typing import Any, cast

import pytest
from pydantic import ValidationError

from aihub.config import Settings


def test_defaults_are_the_embedded_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AIHUB_DATABASE_URL", "AIHUB_REDIS_URL", "AIHUB_ENV"):
        monkeypatch.delenv(name, raising=False)
    s = Settings()
    assert s.is_sqlite and s.redis_url is None
    assert (s.gateway_port, s.auth_port, s.core_port) == (3000, 3001, 3002)
    assert s.upstream_urls("core") == ["http://127.0.0.1:3002"]
    assert s.upstream_urls("mcp") == ["http://127.0.0.1:3003"]


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIHUB_CORE_URL", "http://a:1, http://b:2")
    monkeypatch.setenv("AIHUB_CORS_ORIGINS", "https://x.example,https://y.example")
    s = Settings()
    assert s.upstream_urls("core") == ["http://a:1", "http://b:2"]
    assert s.cors_origin_list == ["https://x.example", "https://y.example"]


def test_production_refuses_the_default_secret() -> None:
    with pytest.raises(ValidationError, match="AIHUB_JWT_SECRET"):
        Settings(env="production")
    with pytest.raises(ValidationError, match="32 characters"):
        Settings(env="production", jwt_secret="short")
    assert Settings(env="production", jwt_secret="p" * 40).env == "production"


@pytest.mark.parametrize(
    ("field", "value"),
    [("database_url", "mysql://x"), ("redis_url", "http://x"), ("core_port", 0), ("metrics_allow", "not-a-net")],
)
def test_bad_values_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        Settings(**cast(dict[str, Any], {field: value}))
