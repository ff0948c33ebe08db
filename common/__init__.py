"""Shared code of the HPA single-cell classification pipeline (see DESIGN.md)."""
