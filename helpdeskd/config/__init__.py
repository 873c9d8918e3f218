"""Configuration: the TOML file read into frozen dataclasses, and secrets."""
