"""Every background job of core, in one list: the serving process and ``aihub worker`` both
start from here, so a new domain's periodic job is registered once."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aihub.kit.jobs import Periodic

if TYPE_CHECKING:
    from aihub.kit.runtime import Runtime


def periodic(runtime: Runtime) -> list[Periodic]:
    """The periodic jobs of every core domain (importing them also registers their queued jobs)."""
    from aihub.auth.identity import emails  # noqa: F401 - registers the identity email job
    from aihub.core.authorizations import jobs as authorization_jobs
    from aihub.core.credits import jobs as credit_jobs
    from aihub.core.ledger import jobs as ledger_jobs
    from aihub.core.notifications import jobs as _notification_jobs  # noqa: F401 - registers the alert jobs
    from aihub.core.reports import jobs as report_jobs
    from aihub.core.sora import jobs as sora_jobs
    from aihub.core.usage import jobs as usage_jobs
    from aihub.core.webhooks import jobs as webhook_jobs

    return [
        *ledger_jobs.periodic(runtime),
        *credit_jobs.periodic(runtime),
        *sora_jobs.periodic(runtime),
        *usage_jobs.periodic(runtime),
        *report_jobs.periodic(runtime),
        *webhook_jobs.periodic(runtime),
        *authorization_jobs.periodic(runtime),
    ]
