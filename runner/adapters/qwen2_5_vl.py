"""Placeholder: adapter not written yet."""
