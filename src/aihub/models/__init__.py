"""SQLAlchemy models, one module per domain. Importing this package registers every table."""

from aihub.models.apikeys import ApiKey, ApiKeyCounter, UsageAuthorization
from aihub.models.audit import AuditChainHead, AuditLog
from aihub.models.auth import EmailToken, RefreshToken, ServiceToken
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
    QuotaLimit,
    UsageCounter,
    UsageDailyModelRollup,
    UsageDailyRollup,
    UsageEvent,
    UsageRollupState,
    UsageWindow,
)
from aihub.models.users import User

__all__ = [
    "ApiKey",
    "ApiKeyCounter",
    "AuditChainHead",
    "AuditLog",
    "CreditAccount",
    "CreditAlertSettings",
    "CreditHold",
    "CreditPackage",
    "CreditTransaction",
    "EmailToken",
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
    "QuotaLimit",
    "RefreshToken",
    "ReportJob",
    "Role",
    "RolePermission",
    "ServiceToken",
    "SoraGeneration",
    "SoraSession",
    "UsageAuthorization",
    "UsageCounter",
    "UsageDailyModelRollup",
    "UsageDailyRollup",
    "UsageEvent",
    "UsageRollupState",
    "UsageWindow",
    "User",
    "UserPermission",
    "UserRole",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
]
