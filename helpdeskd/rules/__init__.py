"""Routing and time rules (pure): model, syntax and loader of rules/*.yaml, evaluate, schedule."""
