"""structlog JSON lines on stdout; the request ID rides on every line through contextvars.

The standard library's loggers (uvicorn, alembic, sqlalchemy) are routed through the same
renderer so that a process prints JSON and nothing else.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson
import structlog

_SECRET_KEYS = {"password", "password_hash", "token", "refresh_token", "authorization", "secret"}


def _redact(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    # A last line of defence: a secret passed by mistake as a log field never reaches the output.
    for key in list(event):
        if key.lower() in _SECRET_KEYS:
            event[key] = "[redacted]"
    return event


def _dumps(value: Any, **kwargs: Any) -> str:
    # orjson instead of the standard json: the access line is written on every request, and
    # rendering it with json.dumps was ~5% of a gateway request's CPU.
    return orjson.dumps(value, default=kwargs.get("default", str), option=orjson.OPT_NON_STR_KEYS).decode()


def configure_logging(level: str = "info") -> None:
    numeric = logging.getLevelName(level.upper())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_dumps),
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(numeric)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
    # We write our own access line (with the request ID); uvicorn's would be a second, poorer one.
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
