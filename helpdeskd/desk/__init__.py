"""The desk's work beyond intake: agents, automation, notices, incidents, customers."""
