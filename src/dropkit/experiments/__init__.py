"""Experiments built on dropkit's public API (the core never imports this package)."""
