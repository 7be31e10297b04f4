"""shazamq."""
