"""Prometheus metrics of the ledger (served by core's /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

HOLDS_EXPIRED = Counter("aihub_credit_holds_expired_total", "Holds released by the expiry sweep")
WEBHOOK_DELIVERIES = Counter(
    "aihub_credit_low_balance_webhooks_total", "Low-balance webhook deliveries by outcome", ["outcome"]
)
RECONCILE_MISMATCHES = Gauge(
    "aihub_ledger_reconcile_mismatches",
    "Accounts whose balance is not the sum of their ledger, or whose balanceAfter chain breaks "
    "(last reconcile run in this process)",
)
RECONCILE_ACCOUNTS = Gauge("aihub_ledger_reconcile_accounts", "Accounts checked by the last reconcile run")
RECONCILE_LAST_RUN = Gauge("aihub_ledger_reconcile_last_run_timestamp_seconds", "When the last reconcile run finished")
