"""The few exceptions helpdeskd raises across module boundaries."""


class HelpdeskError(Exception):
    """Base class: the message is one line a person can act on."""


class ConfigError(HelpdeskError):
    """The configuration is invalid; the message names the key."""


class UserError(HelpdeskError):
    """A command-line request cannot be carried out (exit status 1)."""


class SchemaError(HelpdeskError):
    """The database schema is not at the migration head."""


class TemporaryFailure(HelpdeskError):
    """Try again later (a 4xx, a dropped connection)."""


class PermanentFailure(HelpdeskError):
    """Do not try again (a 5xx)."""


class ParseTimeout(HelpdeskError):
    """A message took too long to parse."""


class TemplateError(HelpdeskError):
    """A template is missing or fails to render."""


class DatabaseUnreachable(HelpdeskError):
    """The database does not answer: nothing listens, a login is refused, a folder is missing."""
