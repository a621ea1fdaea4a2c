"""Callback delivery: SSRF policy (ssrf.py), Standard Webhooks signing (signing.py), the outbox sender (sender.py)."""
