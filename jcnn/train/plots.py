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


def _tiles(w: np.ndarray) -> np.ndarray:
    """HWIO kernel (kh, kw, C, O) -> O images: (O, kh, kw) for C != 3 (the first input channel)
    or (O, kh, kw, 3) RGB for C == 3, each scaled to [0, 1]."""
    w = np.moveaxis(np.asarray(w, np.float64), -1, 0)
    w = w if w.shape[-1] == 3 else w[..., 0]
    lo = w.min(axis=tuple(range(1, w.ndim)), keepdims=True)
    hi = w.max(axis=tuple(range(1, w.ndim)), keepdims=True)
    return (w - lo) / np.where(hi > lo, hi - lo, 1)


def plot_filters(before: np.ndarray, after: np.ndarray, path: str | os.PathLike) -> None:
    """The first layer's filters, HWIO `(kh, kw, C, O)`, at initialisation (top) and after
    training (bottom), one tile per output channel."""
    tiles = [_tiles(before), _tiles(after)]
    n = tiles[0].shape[0]
    cols = min(n, 16)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(cols * 0.8, 2 * rows * 0.8 + 0.8), layout="constrained")
    for r, (title, t) in enumerate(zip(("before training", "after training"), tiles)):
        sub = fig.add_subfigure(fig.add_gridspec(2, 1)[r])
        sub.suptitle(title)
        axes = np.atleast_1d(sub.subplots(rows, cols)).ravel()
        for i, ax in enumerate(axes):
            ax.set_axis_off()
            if i < n:
                ax.imshow(t[i], cmap="gray", interpolation="nearest", vmin=0, vmax=1)
    _save(fig, path)


__all__ = ["plot_curves", "plot_filters"]
