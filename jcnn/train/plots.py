"""Training plots as PNG files, drawn with matplotlib's Agg canvas: no pyplot, no window, no
global figure state, so it runs the same on a headless server and inside tests."""
from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from jcnn.train.atomic import atomic_open


def _save(fig: Figure, path: str | os.PathLike) -> None:
    FigureCanvasAgg(fig)
    with atomic_open(path, "wb") as f:  # never a torn PNG where a good one was
        fig.savefig(f, format="png", dpi=100)


def plot_curves(records: Sequence[dict], path: str | os.PathLike) -> None:
    """Loss (train and test) and test accuracy per epoch, from `metrics.jsonl` records
    (dicts with `epoch`, `train_loss`, `test_loss`, `test_accuracy`; or `val_loss` and
    `val_accuracy` for a run with a validation set, plotted instead)."""
    epochs = [r["epoch"] for r in records]
    on = "val" if records and "val_loss" in records[0] else "test"
    fig = Figure(figsize=(10, 4), layout="constrained")
    loss, acc = fig.subplots(1, 2)
    loss.plot(epochs, [r["train_loss"] for r in records], "o-", label="train")
    loss.plot(epochs, [r[f"{on}_loss"] for r in records], "s-", label=on)
    loss.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title="loss")
    loss.legend()
    acc.plot(epochs, [100 * r[f"{on}_accuracy"] for r in records], "s-", color="C1")
    acc.set(xlabel="epoch", ylabel="%", title=f"{'validation' if on == 'val' else on} accuracy")
    for ax in (loss, acc):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _save(fig, path)


def filters_figure(before: np.ndarray, after: np.ndarray, title: str | None = None) -> Figure:
    """The first layer's filters, HWIO `(kh, kw, C, O)`, at initialisation, after training and
    the change (after minus before: the sum of every update), one tile per output channel
    (input channel 0 where C > 1). Before and after share one colour scale, the change has its
    own, each row with its colour bar, symmetric about 0 (red +, blue -): equal colours in a
    row are equal weights."""
    before = np.moveaxis(np.asarray(before, np.float64)[:, :, 0, :], -1, 0)  # (O, kh, kw)
    after = np.moveaxis(np.asarray(after, np.float64)[:, :, 0, :], -1, 0)
    change = after - before
    n = before.shape[0]
    cols = min(n, 16)
    rows = math.ceil(n / cols)
    height = 3 * (rows * 0.95 + 0.45) + (0.25 + 0.2 * title.count("\n") if title else 0)
    fig = Figure(figsize=(cols * 0.95 + 1.2, height), layout="constrained")
    weights = float(max(np.abs(before).max(), np.abs(after).max())) or 1.0
    blocks = (("before training", before, weights), ("after training", after, weights),
              ("change = after - before", change, float(np.abs(change).max()) or 1.0))
    for sub, (name, tiles, limit) in zip(fig.subfigures(3, 1), blocks):
        sub.suptitle(name, fontsize=10)
        axes = np.atleast_1d(sub.subplots(rows, cols)).ravel()
        for i, ax in enumerate(axes):
            ax.set_axis_off()
            if i < n:
                image = ax.imshow(tiles[i], cmap="RdBu_r", vmin=-limit, vmax=limit,
                                  interpolation="nearest")
        sub.colorbar(image, ax=axes, shrink=0.9, aspect=10 * rows)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_confusion(matrix: np.ndarray, path: str | os.PathLike) -> None:
    """A confusion matrix (rows: true label, columns: predicted) as an image, counts written in
    its cells."""
    classes = len(matrix)
    fig = Figure(figsize=(1 + 0.5 * classes, 0.5 + 0.5 * classes), layout="constrained")
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=8,
                color="white" if v > matrix.max() / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true label", xticks=range(classes),
           yticks=range(classes), title=f"accuracy {np.trace(matrix) / max(matrix.sum(), 1):.2%}")
    _save(fig, path)


def plot_filters(before: np.ndarray, after: np.ndarray, path: str | os.PathLike,
                 title: str | None = None) -> None:
    """`filters_figure` as a PNG at `path`."""
    _save(filters_figure(before, after, title), path)


__all__ = ["filters_figure", "plot_curves", "plot_filters", "plot_confusion"]
