"""Blocklist sync with peer instances: read their domain blocks, merge, apply what fedimod manages."""
