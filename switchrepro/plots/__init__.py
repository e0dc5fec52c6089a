"""Figures of the reproduction (matplotlib, Agg only)."""
