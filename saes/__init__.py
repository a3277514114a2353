"""saes package."""
