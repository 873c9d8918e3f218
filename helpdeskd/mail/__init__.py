"""Mail as data: parse what arrives, render and build what goes out (pure)."""
