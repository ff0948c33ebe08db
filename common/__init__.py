"""Shared code of the HPA single-cell classification pipeline (see DESIGN.md)."""
import os

# Every step imports this package before albumentations (common/data/augment.py, common/data/bag_datasets.py):
# albumentations reads this at import and then skips its online update check (no network, no warning).
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
