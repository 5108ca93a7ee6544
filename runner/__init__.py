"""Runs inside a model family's image (or as a local process): captions every sample, writes predictions."""
