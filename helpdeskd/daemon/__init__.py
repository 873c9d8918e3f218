"""The long-running daemon: supervision, signals, sd_notify, logs, checks."""
