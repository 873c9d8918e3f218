"""Read secrets named in the config: ``*_file``, ``*_env`` or systemd ``*_credential`` keys.

This is the one place a secret is read, whatever it is for (an IMAP password, the token keys, the
DKIM private key), so every secret is found, stripped and reported the same way. The value is held
in a :class:`Secret`, whose ``repr`` hides it: it never reaches a log, a repr or an error message.
Errors name the config key that points at the secret, never the secret itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from helpdeskd.errors import ConfigError

SecretKind = Literal["file", "env", "credential"]
# A secret NAME is read from exactly one of NAME_file, NAME_env or NAME_credential.
SECRET_KINDS: tuple[SecretKind, ...] = ("file", "env", "credential")


class Secret:
    """A secret string that never shows itself in logs, reprs or tracebacks."""

    __slots__ = ("_missing", "_value")

    def __init__(self, value: str, missing: str | None = None) -> None:
        self._value = value
        self._missing = missing

    @classmethod
    def unavailable(cls, reason: str) -> Secret:
        """Return a secret this process cannot read (a systemd credential outside the service)."""
        return cls("", missing=reason)

    @property
    def available(self) -> bool:
        return self._missing is None

    def reveal(self) -> str:
        """Return the value; raise ConfigError when this process cannot read it."""
        if self._missing is not None:
            raise ConfigError(self._missing)
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class SecretSource:
    """The config key that says where a secret is, e.g. ``password_file = "imap-password"``."""

    table: str  # the dotted name of its table ("mailbox[0]", "dkim"); "" at the top level
    name: str  # the secret's name: "password" for password_file, password_env, …
    kind: SecretKind
    value: str  # a path, an environment variable or a credential name; never the secret

    @property
    def key(self) -> str:
        """Return the dotted config key, e.g. ``mailbox[0].password_file``."""
        key = f"{self.name}_{self.kind}"
        return f"{self.table}.{key}" if self.table else key


def read_secret(
    source: SecretSource, *, base: Path, lenient: bool = False, what: str = "UTF-8 text"
) -> Secret:
    """Read the secret SOURCE points at; a relative ``*_file`` path is taken from BASE.

    Surrounding whitespace is stripped wherever the secret comes from (files end in a newline).
    WHAT names what the secret must be, for the error when a file or credential cannot be
    decoded. With LENIENT, a systemd credential this process cannot reach (an admin's CLI outside
    the service) is returned as an unavailable secret that fails only when it is revealed.
    """
    if source.kind == "env":
        if source.value not in os.environ:
            raise ConfigError(f"{source.key}: environment variable {source.value} is not set")
        return Secret(os.environ[source.value].strip())
    if source.kind == "file":
        path = Path(source.value)
        path = path if path.is_absolute() else base / path
        return Secret(_read(path, source, f"cannot read {path}", what))
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory and lenient:
        return Secret.unavailable(
            f"{source.key}: only the service can read systemd credentials; run this command "
            f"through 'systemd-run -p LoadCredential=…' or use {source.name}_file"
        )
    if not directory:
        raise ConfigError(
            f"{source.key}: $CREDENTIALS_DIRECTORY is not set (use LoadCredential= in the unit)"
        )
    path = Path(directory) / source.value
    return Secret(_read(path, source, f"cannot read credential {source.value}", what))


def _read(path: Path, source: SecretSource, cannot: str, what: str) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{source.key}: {cannot}: {exc.strerror}") from None
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        # Neither the bytes nor where decoding stopped go into the message: they are the secret.
        raise ConfigError(f"{source.key}: not {what}") from None
