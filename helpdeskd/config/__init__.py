"""Configuration: the dataclasses (settings), reading the TOML file (load), and secrets."""
