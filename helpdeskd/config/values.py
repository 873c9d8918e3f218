"""Read typed values from a TOML table, each error one line that names the key's dotted path.

helpdeskd.config.load and helpdeskd.config.sections read every table through :class:`Table`:
it checks each value's type, remembers which keys were read so that an unknown key is an error,
and reads secrets through helpdeskd.config.secrets.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from helpdeskd.config.secrets import SECRET_KINDS, Secret, SecretSource, read_secret
from helpdeskd.errors import ConfigError


class Table:
    """A TOML table that remembers its dotted name, so errors can name the key."""

    def __init__(
        self, data: Mapping[str, Any], where: str, base: Path, *, lenient: bool = False
    ) -> None:
        self.data = data
        self.where = where
        self.base = base
        self.lenient = lenient  # systemd credentials out of reach load as unavailable secrets
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        self.used.add(name)
        if name not in self.data:
            if default is ...:
                raise ConfigError(f"{self.key(name)}: required key is missing")
            return default
        value = self.data[name]
        # bool is an int in Python; a number key given `true` is still a mistake.
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise ConfigError(f"{self.key(name)}: expected {_kind_name(kinds)}, got a boolean")
        if not isinstance(value, kinds):
            raise ConfigError(
                f"{self.key(name)}: expected {_kind_name(kinds)}, got {type(value).__name__}"
            )
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value: str = self.get(name, str, default)
        if value not in choices:
            raise ConfigError(
                f"{self.key(name)}: must be one of {', '.join(choices)}, not {value!r}"
            )
        return value

    def path(self, name: str, default: Path | None) -> Path:
        value = self.get(name, str, None)
        if value is None:
            if default is None:
                raise ConfigError(f"{self.key(name)}: required key is missing")
            return default
        path = Path(value)
        return path if path.is_absolute() else self.base / path

    def address(self, name: str, default: Any = ...) -> str:
        """Read NAME, an email address (a default of None passes through)."""
        value: str = self.get(name, str, default)
        if value is None:
            return value
        local, at, domain = value.partition("@")
        if not at or not local or not domain or " " in value or "." not in domain:
            raise ConfigError(f"{self.key(name)}: {value!r} is not an email address")
        return value

    def positive(self, name: str, default: float) -> float:
        """Read NAME, a number greater than 0."""
        value = float(self.get(name, (int, float), default))
        if value <= 0:
            raise ConfigError(f"{self.key(name)}: must be greater than 0")
        return value

    def nonempty(self, name: str) -> str:
        """Read NAME, a required string that is not blank."""
        value: str = self.get(name, str)
        if not value.strip():
            raise ConfigError(f"{self.key(name)}: must not be empty")
        return value

    def secret(
        self, name: str, *, required: bool = False, inline: bool = True, what: str = "UTF-8 text"
    ) -> Secret | None:
        """Read NAME from NAME_file, NAME_env, NAME_credential or (if INLINE) NAME itself.

        An inline secret sits in the config file itself: allowed for passwords, discouraged.
        """
        sources = [f"{name}_{kind}" for kind in SECRET_KINDS]
        names = [*sources, name] if inline else sources
        given = {key: value for key in names if (value := self.get(key, str, None)) is not None}
        if len(given) > 1:
            raise ConfigError(f"{self.key(name)}: give only one of {_one_of(names)}")
        if not given:
            if required:
                raise ConfigError(f"{self.key(name)}: required; set {_one_of(sources)}")
            return None
        [(key, value)] = given.items()
        if key == name:
            return Secret(value)
        if not value.strip():
            raise ConfigError(f"{self.key(key)}: must not be empty")
        kind = SECRET_KINDS[sources.index(key)]
        source = SecretSource(self.where, name, kind, value)
        return read_secret(source, base=self.base, lenient=self.lenient, what=what)

    def table(self, name: str, default_empty: bool = True) -> Table:
        value = self.get(name, dict, {} if default_empty else ...)
        return self.child(value, self.key(name))

    def child(self, data: Mapping[str, Any], where: str) -> Table:
        """Return a table inside this one (an item of an array of tables, say)."""
        return Table(data, where, self.base, lenient=self.lenient)

    def check_unknown(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(f"{self.key(unknown[0])}: unknown key")


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        dict: "a table",
        list: "an array",
    }
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _one_of(names: list[str]) -> str:
    return f"{', '.join(names[:-1])} or {names[-1]}"


def is_loopback(host: str) -> bool:
    """Whether HOST names this machine: where plain-text IMAP, SMTP or http:// may go."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
