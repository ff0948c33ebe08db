"""Figures written as PNG with matplotlib's Agg backend (no display needed).

Each function is self-contained: it takes plain numbers, writes one PNG atomically and returns
its path.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage
from skimage.segmentation import find_boundaries

from common.constants import CLASS_NAMES, FALSE_COLOUR, NUM_CLASSES
from common.io import atomic_path


def _pyplot():
    import matplotlib  # here: only a step that draws loads it, and the Agg backend is set before pyplot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    _pyplot().close(fig)
    return path


# ----------------------------------------------------------------------------- evaluation (S6)
def plot_class_ap(per_class: dict[str, dict[int, float]], path: str | Path, title: str = "") -> Path:
    """Grouped bar chart of per-class AP: ``per_class = {"strict": {c: ap}, "lenient": {...}}``.

    Classes missing from every series (no ground truth) are left out; the legend gives each
    series' mean.
    """
    plt = _pyplot()
    classes = sorted({c for s in per_class.values() for c in s})
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(classes) + 2), 4.5))
    n = max(len(per_class), 1)
    width = 0.8 / n
    x = np.arange(len(classes))
    for k, (name, aps) in enumerate(per_class.items()):
        vals = [aps.get(c, np.nan) for c in classes]
        mean = np.nanmean(vals) if len(vals) and not np.all(np.isnan(vals)) else float("nan")
        ax.bar(x + (k - (n - 1) / 2) * width, vals, width, label=f"{name} (mAP {mean:.4f})")
    ax.set_xticks(x)
    ax.set_xticklabels([f"{c} {CLASS_NAMES[c][:18]}" if 0 <= c < NUM_CLASSES else str(c) for c in classes],
                       rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("average precision")
    ax.set_title(title or "per-class AP")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_pr_curves(pr: dict[int, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str = "") -> Path:
    """Precision-recall curves, one line per class: ``pr = {c: (precision, recall)}``.

    Each curve is drawn as its precision envelope (the quantity whose area is the AP).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    cmap = plt.get_cmap("tab20")
    for c, (p, r) in sorted(pr.items()):
        p, r = np.asarray(p, float), np.asarray(r, float)
        if len(p):
            env = np.maximum.accumulate(p[::-1])[::-1]
            r_plot, p_plot = np.concatenate(([0.0], r)), np.concatenate(([env[0]], env))
        else:
            r_plot, p_plot = np.array([0.0, 0.0]), np.array([0.0, 0.0])
        name = CLASS_NAMES[c] if 0 <= c < NUM_CLASSES else str(c)
        ax.step(r_plot, p_plot, where="pre", color=cmap(c % 20), lw=1.2, label=f"{c} {name[:22]}")
    ax.set_xlim(0, 1.0)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision (envelope)")
    ax.set_title(title or "precision-recall per class")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="lower left", ncol=2)
    return _save(fig, path)


# ----------------------------------------------------------------------------- training (train.fit)
def plot_training_curves(summary_csv: str | Path, out_png: str | Path) -> Path:
    """Loss (train/val) and metric (val_mAP and any extra ``*mAP*``/``*AP*`` column) per epoch,
    plus the learning rate, from a ``summary.csv`` written by ``train.fit``."""
    df = pd.read_csv(summary_csv)
    if "epoch" not in df.columns:
        raise ValueError(f"{summary_csv}: no 'epoch' column")
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    x = df["epoch"].to_numpy()
    def curve(ax, col):  # epochs without validation (VAL_EVERY > 1) are NaN: skipped, not gaps
        ok = df[col].notna().to_numpy()
        if ok.any():
            ax.plot(x[ok], df[col].to_numpy()[ok], marker="o", ms=3, label=col)

    for col in ("train_loss", "val_loss"):
        if col in df:
            curve(axes[0], col)
    axes[0].set_title("loss")
    metric_cols = [c for c in df.columns if "ap" in c.lower() and c not in ("epoch",)]
    for col in metric_cols:
        curve(axes[1], col)
    axes[1].set_title("validation metrics")
    if "lr" in df:
        axes[2].plot(x, df["lr"], marker="o", ms=3, color="tab:gray", label="lr (end of epoch)")
        axes[2].set_yscale("log")
    axes[2].set_title("learning rate")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return _save(fig, path=out_png)


def false_colour(image: np.ndarray) -> np.ndarray:
    """H x W x 4 RGBY uint8 -> H x W x 3 RGB for display (``constants.FALSE_COLOUR``)."""
    rgb = image.astype(np.float32) @ np.asarray(FALSE_COLOUR, np.float32)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def plot_cell_overlay(image: np.ndarray, labels: np.ndarray, cell_ids, probs: np.ndarray,
                      path: str | Path, top: int = 2, min_prob: float = 0.2, title: str = "") -> Path:
    """The image in false colour, every cell outlined and labelled with its top classes."""
    plt = _pyplot()
    rgb = false_colour(image)
    rgb[find_boundaries(labels, mode="inner")] = (255, 255, 255)
    fig, ax = plt.subplots(figsize=(8, 8 * image.shape[0] / image.shape[1]))
    ax.imshow(rgb)
    ax.set_axis_off()
    centres = ndimage.center_of_mass(np.ones_like(labels), labels, list(cell_ids)) if len(cell_ids) else []
    for cid, (cy, cx), p in zip(cell_ids, centres, probs):
        order = np.argsort(-p)[:top]
        text = "\n".join(f"{CLASS_NAMES[c][:14]} {p[c]:.2f}" for c in order if p[c] >= min_prob) or "-"
        ax.text(cx, cy, f"{cid}\n{text}", color="white", fontsize=5, ha="center", va="center",
                bbox={"facecolor": "black", "alpha": 0.45, "pad": 1, "linewidth": 0})
    if title:
        ax.set_title(title, fontsize=8)
    return _save(fig, path)
