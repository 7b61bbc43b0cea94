"""Parallel layouts and their memory, planned on the meta device (``nemo-craft plan``)."""
