"""ponder."""
