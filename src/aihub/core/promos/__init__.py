"""Promo codes: campaigns, batch generation and race-proof redemption."""
