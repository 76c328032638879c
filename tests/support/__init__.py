"""Helpers shared by tests (not fixtures): schema and CEL checks, subprocess runners."""
