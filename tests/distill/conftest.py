"""Fixtures of the distillation tests (defined in distill_helpers, shared with the test modules)."""

from distill_helpers import dead_endpoint, fake_teacher

__all__ = ["dead_endpoint", "fake_teacher"]
