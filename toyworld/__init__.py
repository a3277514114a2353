"""toyworld package."""
