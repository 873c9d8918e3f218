"""The IMAP edge: the wire's parsers (wire), the aioimaplib adapter (client), the watcher."""
