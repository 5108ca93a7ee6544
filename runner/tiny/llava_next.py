"""Placeholder: tiny builder not written yet."""
