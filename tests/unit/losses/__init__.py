"""Unit tests of nemo_craft.losses (single process)."""
