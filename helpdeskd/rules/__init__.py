"""Routing and time rules: the YAML model, its loader and evaluation (pure)."""
