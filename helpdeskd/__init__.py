"""helpdeskd: an email helpdesk daemon."""

__version__ = "0.1.0"
