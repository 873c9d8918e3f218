"""The IMAP edge: client workarounds, wire parsers and the mailbox watcher."""
