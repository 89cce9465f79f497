"""The figures of docs/answer.md and docs/backprop.md, drawn with matplotlib's Agg canvas (no
window, no pyplot).

    python docs/figures.py --out docs          # regenerates every PNG in docs/

Writes:
  conv1d_neurons.png   docs/answer.md's first picture: a 3-tap filter over 5 inputs as neurons
                       whose connections are coloured by the shared weight they carry, the
                       same layer as a 3x5 matrix, each weight's gradient as a sum, and the
                       same in 2-D (a 2x2 filter over a 3x3 image)
  tied_matrix.png      conv2d of a 4x4 image with a 2x2 filter as a 9x16 matrix, each non-zero
                       coloured by the filter entry it is; below, the dense gradient G X^T on
                       the same cells, whose sums per colour are the filter gradient
  stride_backward.png  the example's stride-2, padding-1 case: dX as a stride-1 correlation of
                       the spread-out G with the rotated filter, dW as a correlation of the
                       padded X with G as the window (its taps stride apart)
  maxpool_routing.png  where max-pool sends each window's gradient: to its first maximum,
                       a tie included; overlapping windows add up
  filters.png          the first conv layer's filters of a small LeNet before and after a few
                       seconds of training on the embedded digits, and the change (the sum of
                       every update), as `jcnn train` draws them (jcnn.train.plots)

Deterministic: the same numbers, the same training run (fixed seeds, CPU), the same bytes
(no timestamps in the PNG metadata). `tied_matrix` is also what tests/test_guide.py checks
against conv2d, so the drawn matrix is proven to be the convolution.
"""
from __future__ import annotations

import argparse
import importlib.util
import itertools
import sys
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Circle, Rectangle

import jcnn
from jcnn._validate import out_size
from jcnn._validate import conv2d_config

HERE = Path(__file__).resolve().parent
FIGURES = ("conv1d_neurons.png", "tied_matrix.png", "stride_backward.png", "maxpool_routing.png",
           "filters.png")
COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")


# ---- the convolution as a matrix ----------------------------------------------------------------

def tied_matrix(w, x_hw, *, stride=1, padding=0, dilation=1, groups=1):
    """conv2d of one image of size `x_hw` with the HWIO kernel `w`, as a dense matrix.

    Returns `(M, which)`, both `(OH*OW*O, H*W*C)`: rows are the output Y[y,x,o] and columns the
    input X[r,c,ch], each in NHWC order, so `Y[n].ravel() = M @ X[n].ravel()`. `which[row, col]`
    is the flat index into `w` (`np.ravel_multi_index((i, j, c, o), w.shape)`) of the filter
    entry at that place, or -1 where the matrix is zero: output (y,x,o) reads input
    (y*sh + i*dh - top, x*sw + j*dw - left, first channel of o's group + c) with weight
    W[i,j,c,o]. Every index that names the same filter entry is one weight, used many times.
    """
    w = np.asarray(w)
    h, wd = x_hw
    kh, kw, cg, co = w.shape
    x_shape = (1, h, wd, cg * groups)
    cfg = conv2d_config(np.zeros(x_shape, w.dtype), w, None, stride, padding, dilation, groups)
    (sh, sw), (dh, dw), ((top, bottom), (left, right)) = cfg.stride, cfg.dilation, cfg.pads
    oh, ow = out_size(h, kh, sh, dh, top, bottom), out_size(wd, kw, sw, dw, left, right)
    which = np.full((oh * ow * co, h * wd * cg * groups), -1)
    for y, x, o, i, j, c in itertools.product(range(oh), range(ow), range(co), range(kh),
                                              range(kw), range(cg)):
        r, q = y * sh + i * dh - top, x * sw + j * dw - left
        if 0 <= r < h and 0 <= q < wd:
            ch = (o // (co // groups)) * cg + c
            row = np.ravel_multi_index((y, x, o), (oh, ow, co))
            col = np.ravel_multi_index((r, q, ch), (h, wd, cg * groups))
            which[row, col] = np.ravel_multi_index((i, j, c, o), w.shape)
    matrix = np.where(which >= 0, w.ravel()[np.maximum(which, 0)], 0)
    return matrix, which


def matrix_text(which, letters="abcd", x_hw=(4, 4), y_hw=(3, 3)) -> str:
    """The tied matrix drawn in text: a letter per filter entry, '.' for a zero (one channel)."""
    cols = [f"x{r}{c}" for r in range(x_hw[0]) for c in range(x_hw[1])]
    rows = [f"y{r}{c}" for r in range(y_hw[0]) for c in range(y_hw[1])]
    lines = ["      " + " ".join(f"{c:>3}" for c in cols)]
    for name, entries in zip(rows, which):
        cells = (letters[k] if k >= 0 else "." for k in entries)
        lines.append(f"{name}   " + " ".join(f"{c:>3}" for c in cells))
    return "\n".join(lines)


# ---- helpers ----------------------------------------------------------------------------------

def _example():
    """examples/conv_backprop_by_hand.py, whose numbers the figures draw."""
    path = HERE.parent / "examples" / "conv_backprop_by_hand.py"
    spec = importlib.util.spec_from_file_location("conv_backprop_by_hand", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100, metadata={"Software": None})  # no version string: same bytes


def _numbers(ax, a, fmt="{:g}", skip_zero=False, colour=lambda v: "black", size=10):
    for (r, c), v in np.ndenumerate(a):
        if not (skip_zero and v == 0):
            ax.text(c, r, fmt.format(v + 0), ha="center", va="center", fontsize=size,
                    color=colour(v))


def _grid_axes(ax, a, title):
    ax.set_title(title, fontsize=10)
    ax.set_xticks(range(a.shape[1]))
    ax.set_yticks(range(a.shape[0]))
    ax.tick_params(length=0, labelsize=8)
    ax.set_xticks(np.arange(-0.5, a.shape[1]), minor=True)
    ax.set_yticks(np.arange(-0.5, a.shape[0]), minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)


def _show(ax, a, title, cmap="RdBu_r", limit=None, **numbers):
    limit = float(np.abs(a).max()) or 1.0 if limit is None else limit
    ax.imshow(a, cmap=cmap, vmin=-limit, vmax=limit)
    _grid_axes(ax, a, title)
    _numbers(ax, a, **numbers)


# ---- figures ----------------------------------------------------------------------------------

CONV1D_X = np.array([1.0, 2.0, 0.0, 3.0, 1.0])  # docs/answer.md, section 2
CONV1D_W = np.array([1.0, -1.0, 2.0])  # the filter [a, b, c]
CONV1D_G = np.array([1.0, -1.0, 0.5])  # the upstream gradient dL/dy


def fig_conv1d_neurons(path: Path) -> None:
    """docs/answer.md's first picture: a 3-tap filter over 5 inputs as a layer of neurons whose
    connections are coloured by the filter entry they carry, the same layer as a 3x5 matrix,
    and each entry's gradient as the sum over its connections."""
    x, w, g = CONV1D_X, CONV1D_W, CONV1D_G
    letters = "abc"
    n, k = len(x), len(w)
    m = n - k + 1
    fig = Figure(figsize=(12, 10), layout="constrained")
    grid = fig.add_gridspec(3, 2, height_ratios=(3, 1.6, 3.4), width_ratios=(1.6, 1))
    net, mat, sums = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1]), \
        fig.add_subplot(grid[1, :])
    _neurons_2d(fig.add_subplot(grid[2, :]))
    xs_in, xs_out = np.arange(n) * 1.0, np.arange(m) * 1.0 + (k - 1) / 2
    for out in range(m):
        for tap in range(k):
            net.plot([xs_in[out + tap], xs_out[out]], [0, 1], color=COLOURS[tap], linewidth=3,
                     zorder=1)
            mid = (0.3 * xs_in[out + tap] + 0.7 * xs_out[out], 0.7)
            net.text(*mid, letters[tap], color=COLOURS[tap], fontsize=11, fontweight="bold",
                     ha="center", va="center", zorder=3,
                     bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none"))
    y = np.array([w @ x[out:out + k] for out in range(m)])
    for row, centres, names, values in ((0, xs_in, "x", x), (1, xs_out, "y", y)):
        for i, (cx, v) in enumerate(zip(centres, values)):
            net.add_patch(Circle((cx, row), 0.22, facecolor="#f4f4f4", edgecolor="black",
                                 zorder=2))
            net.text(cx, row, f"{names}{i}\n{v:g}", ha="center", va="center", fontsize=9,
                     zorder=3)
    for i, gv in enumerate(g):
        net.text(xs_out[i], 1.33, f"g{i} = {gv:g}", ha="center", fontsize=9, color="#444444")
    net.set_xlim(-0.5, n - 0.5)
    net.set_ylim(-0.4, 1.5)
    net.set_aspect("equal")
    net.set_axis_off()
    net.set_title(f"The filter [a, b, c] = [{', '.join(f'{v:g}' for v in w)}] slid over 5 "
                  "inputs: 3 outputs, 9 connections, 3 weights.\nSparse: each output sees 3 "
                  "of the 5 inputs. Shared: one colour = one number.", fontsize=10)

    which = np.full((m, n), -1)
    for out in range(m):
        which[out, out:out + k] = range(k)
    mat.imshow(which + 1, cmap=ListedColormap(["#f4f4f4", *COLOURS[:k]]), vmin=0, vmax=k)
    _grid_axes(mat, which, "the same layer as y = M x: a 3x5 matrix,\neach row the filter "
               "shifted one place (Toeplitz)")
    mat.set_xticklabels([f"x{i}" for i in range(n)])
    mat.set_yticklabels([f"y{i}" for i in range(m)])
    for (r, c), t in np.ndenumerate(which):
        mat.text(c, r, letters[t] if t >= 0 else ".", ha="center", va="center", fontsize=12,
                 color="white" if t >= 0 else "black", fontweight="bold")

    sums.set_axis_off()
    sums.text(0, 0.97, "backwards: every connection x_k -> y_m with weight w sends x_k * g_m to "
              "its weight and w * g_m to its input; a shared weight ADDS its messages:",
              fontsize=10, va="top", transform=sums.transAxes)
    for tap in range(k):
        parts = " + ".join(f"x{out + tap}*g{out}" for out in range(m))
        nums = " + ".join(f"{_lit(x[out + tap])}*{_lit(g[out])}" for out in range(m))
        total = sum(x[out + tap] * g[out] for out in range(m))
        sums.text(0.02, 0.75 - 0.2 * tap, f"d{letters[tap]} = {parts} = {nums} = {total:g}",
                  color=COLOURS[tap], fontsize=11, fontweight="bold", va="top",
                  family="monospace", transform=sums.transAxes)
    mid = m - 1  # the input every output reads: the filter met backwards, c, b, a
    parts = " + ".join(f"{letters[mid - out]}*g{out}" for out in range(m))
    nums = " + ".join(f"{_lit(w[mid - out])}*{_lit(g[out])}" for out in range(m))
    total = sum(w[mid - out] * g[out] for out in range(m))
    sums.text(0.02, 0.1, f"dx{mid} = {parts} = {nums} = {total:g}   (the filter read backwards: "
              "for dX it is rotated)", fontsize=11, va="top", family="monospace",
              transform=sums.transAxes)
    _save(fig, path)


def _neurons_2d(ax) -> None:
    """The same in 2-D: a 3x3 image, a 2x2 filter [[a, b], [c, d]], a 2x2 output, drawn as two
    planes of neurons (seen at a slant) with each connection coloured by its filter entry."""
    def at(r, c, height, shift=0.0):  # a pixel's place on a plane seen at a slant
        return 1.5 * c + 0.6 * r + shift, height - 0.4 * r

    letters = "abcd"
    for y, x, i, j in itertools.product(range(2), range(2), range(2), range(2)):
        (x0, y0), (x1, y1) = at(y + i, x + j, 0), at(y, x, 2.4, 1.05)
        ax.plot([x0, x1], [y0, y1], color=COLOURS[2 * i + j], linewidth=2.5, zorder=1)
    for rows, height, shift, name in ((3, 0, 0.0, "X"), (2, 2.4, 1.05, "Y")):
        for r, c in itertools.product(range(rows), range(rows)):
            ax.add_patch(Circle(at(r, c, height, shift), 0.2, facecolor="#f4f4f4",
                                edgecolor="black", zorder=2))
            ax.text(*at(r, c, height, shift), f"{name}{r}{c}", ha="center", va="center",
                    fontsize=8, zorder=3)
    for k, letter in enumerate(letters):
        ax.text(5.2, 2.3 - 0.45 * k, f"{letter} = W[{k // 2},{k % 2}]: 4 connections, "
                f"d{letter} = sum over the 4 outputs Y[y,x] of X[y+{k // 2},x+{k % 2}] * G[y,x]",
                color=COLOURS[k], fontsize=10, fontweight="bold", va="center")
    ax.text(5.2, 0.25, "The same in 2-D: a 2x2 filter over a 3x3 image. Each output connects to "
            "the 2x2 window\nbelow it (sparse), with the same 4 weights (shared): 16 "
            "connections, 4 numbers.\nEach weight's gradient is the sum over its 4 connections, "
            "as in 1-D.", fontsize=10, va="center")
    ax.set_xlim(-0.4, 15.5)
    ax.set_ylim(-1.1, 2.8)
    ax.set_aspect("equal")
    ax.set_axis_off()


def _lit(v: float) -> str:
    """-1 as (-1): the printed products read as arithmetic."""
    return f"({v:g})" if v < 0 else f"{v:g}"


def fig_tied_matrix(path: Path) -> None:
    ex = _example()
    case = ex.CASES[0]  # stride 1, no padding
    w = ex.W[:, :, None, None]
    _, which = tied_matrix(w, ex.X.shape)
    g = case.g.ravel()
    dense_grad = np.outer(g, ex.X.ravel())  # dL/dM[r, s] = G[r] * X[s], as for any dense layer
    letters = "abcd"
    cmap = ListedColormap(["#f4f4f4", *COLOURS[:4]])
    cols = [f"x{r}{c}" for r in range(4) for c in range(4)]
    rows = [f"y{r}{c}" for r in range(3) for c in range(3)]

    fig = Figure(figsize=(10, 9.6), layout="constrained")
    top, bottom = fig.subplots(2, 1)
    for ax in (top, bottom):
        ax.imshow(which + 1, cmap=cmap, vmin=0, vmax=4)
        _grid_axes(ax, which, "")
        ax.set_xticklabels(cols)
        ax.set_yticklabels(rows)
    labels = {k: f"{letters[k]}={ex.W.ravel()[k]:g}" for k in range(4)}
    for (r, c), k in np.ndenumerate(which):
        if k >= 0:
            top.text(c, r, letters[k], ha="center", va="center", color="white", fontsize=12,
                     fontweight="bold")
            bottom.text(c, r, f"{dense_grad[r, c] + 0:g}", ha="center", va="center", color="white",
                        fontsize=9, fontweight="bold")
    top.set_title("Y = M X: conv2d of a 4x4 image with the 2x2 filter [[a, b], [c, d]] is a 9x16 "
                  "matrix.\nSparse: each row (output) sees a 2x2 window, 4 of 16 inputs. "
                  "Tied: each colour is ONE weight, used 9 times.\n"
                  + ", ".join(labels.values()), fontsize=10)
    dw = [dense_grad[which == k].sum() for k in range(4)]
    bottom.set_title("dL/dM = G X^T, the dense layer's gradient (drawn on M's non-zeros; the "
                     "example's X and G).\nA tied weight's gradient is the SUM of its cells, "
                     "one per use: " + ", ".join(f"d{letters[k]} = {dw[k]:g}" for k in range(4))
                     + " = the example's dW", fontsize=10)
    _save(fig, path)


def fig_stride_backward(path: Path) -> None:
    ex = _example()
    case = ex.CASES[1]  # stride 2, padding 1
    s, p, g, x, w = case.stride, case.padding, case.g, ex.X, ex.W
    kh = w.shape[0]
    spread = np.zeros(((g.shape[0] - 1) * s + 1,) * 2)
    spread[::s, ::s] = g
    canvas = np.zeros((x.shape[0] + kh - 1,) * 2)
    off = kh - 1 - p
    for (r, c), v in np.ndenumerate(spread):
        if 0 <= r + off < canvas.shape[0] and 0 <= c + off < canvas.shape[1]:
            canvas[r + off, c + off] = v
    dx = ex.forward_loops(canvas, w[::-1, ::-1], 1, 0)
    padded = np.pad(x, p)
    g_window = np.zeros(((g.shape[0] - 1) * s + 1,) * 2)
    g_window[::s, ::s] = g
    dw = ex.filter_grad_loops(x, w.shape, g, s, p)
    ways = ex.grads_four_ways(case)
    assert np.allclose(dx, ways["custom_vjp"][0]) and np.allclose(dw, ways["custom_vjp"][1])

    fig = Figure(figsize=(13, 6.4), layout="constrained")
    axes = fig.subplots(2, 4)
    blank = dict(skip_zero=False)
    _show(axes[0, 0], g, "G = dL/dY (3x3)", **blank)
    _show(axes[0, 1], canvas, f"G spread by the stride ({s - 1} zero between\nentries), "
          f"offset k-1-p = {off}: the canvas", **blank)
    _show(axes[0, 2], w[::-1, ::-1], "W rotated 180 degrees", **blank)
    _show(axes[0, 3], dx, "dX = canvas (*) rot180(W),\nstride 1: jcnn's _conv2d_dx", **blank)
    _show(axes[1, 0], padded, f"X padded by p = {p}", **blank)
    _show(axes[1, 1], g_window, f"G as the window: taps {s} apart\n(the forward stride)", **blank)
    axes[1, 2].set_axis_off()
    axes[1, 2].text(0.5, 0.5, "dW[i,j] = sum over the window\nplaced at (i, j) in padded X\n"
                    "of X * G\n\nwindow moves by the\ndilation (1 here)", ha="center",
                    va="center", fontsize=11, transform=axes[1, 2].transAxes)
    _show(axes[1, 3], dw, "dW = padded X (*) G,\njcnn's _conv2d_dw", **blank)
    fig.suptitle(f"Backward through conv2d, stride {s}, padding {p} (the example's second case): "
                 "both gradients are convolutions again", fontsize=12)
    _save(fig, path)


MAXPOOL_X = np.array([[1.0, 3.0, 2.0, 0.0],
                      [3.0, 2.0, 5.0, 1.0],
                      [0.0, 4.0, 1.0, 1.0],
                      [2.0, 1.0, 6.0, 2.0]])


def max_pool_routing(x, g, window, stride):
    """dX of max-pool by hand: each window's G goes to its FIRST maximum in row-major order."""
    dx = np.zeros_like(x)
    for (y, xx), gv in np.ndenumerate(g):
        patch = x[y * stride:y * stride + window, xx * stride:xx * stride + window]
        r, c = np.unravel_index(np.argmax(patch), patch.shape)  # argmax: the first maximum
        dx[y * stride + r, xx * stride + c] += gv
    return dx


def _max_pool_grad(x, g, window, stride):
    """The same dX from jax.grad through jcnn.max_pool2d's hand rule."""
    nhwc = jnp.asarray(x)[None, :, :, None]
    dx = jax.jit(jax.grad(
        lambda a: jnp.sum(jcnn.max_pool2d(a, window, stride) * g[None, :, :, None])))(nhwc)
    return np.asarray(dx)[0, :, :, 0]


def fig_maxpool_routing(path: Path) -> None:
    x = MAXPOOL_X
    cases = [(2, 2, np.array([[1.0, 2.0], [3.0, 4.0]])),  # windows side by side
             (3, 1, np.array([[1.0, 2.0], [3.0, 4.0]]))]  # overlapping windows
    fig = Figure(figsize=(12, 6.4), layout="constrained")
    axes = fig.subplots(2, 3)
    for row, (k, s, g) in enumerate(cases):
        dx = max_pool_routing(x, g, k, s)
        assert np.array_equal(dx, _max_pool_grad(x, g, k, s)), "routing disagrees with jcnn"
        y = np.array([[x[a * s:a * s + k, b * s:b * s + k].max() for b in range(g.shape[1])]
                      for a in range(g.shape[0])])
        ax = axes[row, 0]
        ax.imshow(x, cmap="Greys", vmin=0, vmax=12)
        _grid_axes(ax, x, f"X with the {k}x{k} windows, stride {s};\n*: each window's first "
                          "maximum (row-major order)")
        _numbers(ax, x)
        for index, ((a, b), colour) in enumerate(zip(np.ndindex(*g.shape), COLOURS)):
            inset = 0.06 + 0.08 * index if s < k else 0.06  # overlapping outlines stay apart
            ax.add_patch(Rectangle((b * s - 0.5 + inset, a * s - 0.5 + inset), k - 2 * inset,
                                   k - 2 * inset, fill=False, edgecolor=colour, linewidth=2.5))
            patch = x[a * s:a * s + k, b * s:b * s + k]
            r, c = np.unravel_index(np.argmax(patch), patch.shape)
            shift = -0.3 + 0.2 * (index % 4)  # windows sharing a maximum: stars side by side
            ax.text(b * s + c + shift, a * s + r - 0.3, "*", color=colour, fontsize=16,
                    ha="center", va="center", fontweight="bold")
            ties = np.argwhere(patch == patch.max())
            if len(ties) > 1 and row == 0:
                for tr, tc in ties[1:]:
                    ax.text(b * s + tc, a * s + tr + 0.33, "tie: loses", fontsize=7,
                            ha="center", va="center", color=colour)
        ax = axes[row, 1]
        ax.imshow(np.zeros_like(g), cmap="Greys", vmin=0, vmax=1)
        _grid_axes(ax, g, "Y = max of each window | G = dL/dY")
        for (a, b), colour in zip(np.ndindex(*g.shape), COLOURS):
            ax.text(b, a, f"Y={y[a, b]:g}\nG={g[a, b]:g}", ha="center", va="center",
                    color=colour, fontsize=12, fontweight="bold")
        ax = axes[row, 2]
        ax.imshow(dx, cmap="Reds", vmin=0, vmax=max(dx.max(), 1) * 1.6)
        what = ("each window's G lands on its first maximum;\nevery other element gets 0"
                if s >= k else "overlapping windows: an element that is the\nfirst maximum "
                               "of several windows gets the sum")
        _grid_axes(ax, dx, "dX: " + what)
        _numbers(ax, dx)
    fig.suptitle("Max-pool backward routes the gradient, it computes nothing "
                 "(jax.grad through jcnn.max_pool2d gives the same dX)", fontsize=12)
    _save(fig, path)


def train_lenet(steps: int, seed: int = 0):
    """A small LeNet (8 then 16 5x5 filters) on the embedded 8x8 digits, adam, batch 32.
    Every gradient is jcnn's hand-derived rule (the model's ops are `jcnn`).
    Returns (first conv kernel before, after, losses, test accuracy)."""
    import optax

    from jcnn import models
    from jcnn.train.data import batches, load_dataset
    from jcnn.train.step import init_train_state, make_train_step

    model = models.lenet(10, channels=(8, 16), hidden=(32,), ops=jcnn)
    optimizer = optax.adam(3e-3)
    data = load_dataset("digits")
    ts = init_train_state(model, optimizer, jax.random.key(seed), (32, 8, 8, 1))
    before = np.array(ts.params["0_conv2d"]["w"])
    step = make_train_step(model, optimizer, ops=jcnn)
    stream = (b for epoch in itertools.count()
              for b in batches(data.train_images, data.train_labels, 32, seed=seed, epoch=epoch))
    losses = []
    for images, labels in itertools.islice(stream, steps):
        ts, loss = step(ts, images, labels)
        losses.append(float(loss))
    after = np.array(ts.params["0_conv2d"]["w"])
    logits, _ = jax.jit(partial(model.apply, train=False))(ts.params, ts.state, data.test_images)
    accuracy = float(np.mean(np.argmax(np.asarray(logits), axis=1) == data.test_labels))
    return before, after, losses, accuracy


def fig_filters(path: Path, steps: int) -> None:
    """What `jcnn train --out DIR` draws (`jcnn.train.plots.filters_figure`), for a short run."""
    from jcnn.train.plots import filters_figure

    before, after, losses, accuracy = train_lenet(steps)
    title = (f"First-layer 5x5 filters of a small LeNet, {steps} adam steps on the 8x8 digits:"
             f"\nloss {losses[0]:.2f} -> {np.mean(losses[-20:]):.2f}, test accuracy "
             f"{accuracy:.0%}. Each filter moved by the sum of its updates,\neach built from "
             "dW = sum over batch and positions of X * G")
    _save(filters_figure(before, after, title), path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder for the PNGs (docs/)")
    parser.add_argument("--steps", type=int, default=300,
                        help="training steps for filters.png (default 300)")
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)  # the worked numbers are float64; training
    #                                             stays float32 (its params are made float32)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, draw in (("conv1d_neurons.png", fig_conv1d_neurons),
                       ("tied_matrix.png", fig_tied_matrix),
                       ("stride_backward.png", fig_stride_backward),
                       ("maxpool_routing.png", fig_maxpool_routing),
                       ("filters.png", lambda p: fig_filters(p, args.steps))):
        start = time.perf_counter()
        draw(args.out / name)
        print(f"wrote {args.out / name} ({time.perf_counter() - start:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
