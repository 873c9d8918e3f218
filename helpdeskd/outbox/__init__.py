"""Outgoing mail: compose and queue it, send it over SMTP, sign it with DKIM."""
