"""autointerp package."""
