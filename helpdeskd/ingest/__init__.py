"""Received mail into the store: batches, lookups, the writer, the parse pool, sources."""
