"""The HTTP side: the app, unsubscribe pages and the status page."""
