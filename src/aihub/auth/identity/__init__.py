"""Identity: email verification, password reset and Google sign-in (OpenID Connect).

The users' data stays in core's tables (``users``); this package keeps only the one-time
tokens it mails (``auth_email_tokens``) and the short-lived OAuth flow state (in the store).
"""
