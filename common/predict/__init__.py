"""Prediction: runs rebuilt from checkpoints, test-time views, image sources, per-cell tables."""
