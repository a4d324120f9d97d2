"""SQLAlchemy models, one module per domain. Importing this package registers every table."""

from aihub.models.audit import AuditChainHead, AuditLog
from aihub.models.auth import RefreshToken, ServiceToken
from aihub.models.credits import CreditAccount, CreditHold, CreditTransaction
from aihub.models.idempotency import IdempotencyKey
from aihub.models.notifications import CreditAlertSettings, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from aihub.models.payments import CreditPackage, Payment, PaymentEvent
from aihub.models.pricing import ModelPrice
from aihub.models.promos import PromoCode, PromoRedemption, PromoUserCount
from aihub.models.rbac import Permission, Role, RolePermission, UserPermission, UserRole
from aihub.models.reports import ReportJob
from aihub.models.sora import SoraGeneration, SoraSession
from aihub.models.usage import (
    Quota,
    QuotaCounter,
    UsageDailyModelRollup,
    UsageDailyRollup,
    UsageEvent,
    UsageRollupState,
)
from aihub.models.users import User

__all__ = [
    "AuditChainHead",
    "AuditLog",
    "CreditAccount",
    "CreditAlertSettings",
    "CreditHold",
    "CreditPackage",
    "CreditTransaction",
    "IdempotencyKey",
    "ModelPrice",
    "Payment",
    "PaymentEvent",
    "Permission",
    "PromoCode",
    "PromoRedemption",
    "PromoUserCount",
    "Quota",
    "QuotaCounter",
    "RefreshToken",
    "ReportJob",
    "Role",
    "RolePermission",
    "ServiceToken",
    "SoraGeneration",
    "SoraSession",
    "UsageDailyModelRollup",
    "UsageDailyRollup",
    "UsageEvent",
    "UsageRollupState",
    "User",
    "UserPermission",
    "UserRole",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
]
