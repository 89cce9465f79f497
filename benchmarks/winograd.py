"""Winograd's minimal filtering for ResNet-8's 3x3 stride-1 convolutions, against XLA's
convolution and PyTorch's (oneDNN), on this backend: is it a form worth having (issue #21)?

F(m x m, 3 x 3) computes each m x m tile of the output from an (m + 2) x (m + 2) tile of the
input with (m + 2)**2 multiplies per channel pair instead of 9 m**2 (Lavin and Gray, 2016):

    Y = A^T [ (G w G^T) (.) (B^T d B) ] A,

the elementwise product summed over the input channels, which makes it (m + 2)**2 matmuls of
(tiles x C) by (C x O). Here the input transform B^T d B is strided slices combined by XLA's
elementwise fusion, the matmuls one batched `dot_general`, the output transform A^T M A
elementwise again, interleaved back to NHWC. The forward and the input gradient of a stride-1
3x3 conv are both such convolutions (the input gradient's kernel flipped, C and O swapped), so
the forward's time of (C -> O) stands for the input gradient of (O -> C).

    python benchmarks/winograd.py [--batch-sizes 32 128] [--repeats 20]
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from conv_maps import torch_maps  # benchmarks/, the script's directory

from jcnn.bench import harness as bench
from jcnn.cli.malloc import keep_freed_memory

# m -> (B^T, G, A^T) of F(m x m, 3 x 3), the interpolation points 0, +-1 (m = 2) and 0, +-1,
# +-2 (m = 4), as in Lavin and Gray's paper
MATRICES = {
    2: (np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]),
        np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]]),
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]])),
    4: (np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                  [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]),
        np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]),
        np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                  [0, 1, -1, 8, -8, 1]])),
}

# ResNet-8's 3x3 stride-1 convolutions: (image side, C, O)
CASES = [(32, 3, 16), (32, 16, 16), (16, 32, 32), (8, 64, 64)]


def combine(coeffs: np.ndarray, parts: list) -> list:
    """[sum_j coeffs[i, j] parts[j] for each row i], skipping the zeros (XLA fuses the sums)."""
    return [sum(c * p for c, p in zip(row, parts) if c != 0) for row in coeffs]


def winograd(m: int, x: jax.Array, w: jax.Array) -> jax.Array:
    """conv(x, w), 3x3, stride 1, padding 1, NHWC / HWIO, by F(m x m, 3 x 3); H, W divisible
    by m."""
    bt, gm, at = MATRICES[m]
    t = m + 2
    n, h, wd, c = x.shape
    th, tw = h // m, wd // m
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    # d[i][j]: element (i, j) of every input tile, (N, th, tw, C)
    d = [[lax.slice(xp, (0, i, j, 0), (n, i + m * (th - 1) + 1, j + m * (tw - 1) + 1, c),
                    (1, m, m, 1)) for j in range(t)] for i in range(t)]
    rows = [combine(bt, [d[i][j] for i in range(t)]) for j in range(t)]  # B^T d, per column j
    v = [combine(bt, [rows[j][a] for j in range(t)]) for a in range(t)]  # (B^T d B)[a][b]
    v = jnp.stack([v[a][b] for a in range(t) for b in range(t)]).reshape(t * t, -1, c)
    u = jnp.einsum("ai,ijco,bj->abco", gm, w, gm).reshape(t * t, c, -1)
    prod = lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,))))  # (t*t, tiles, O)
    mm = prod.reshape(t, t, n, th, tw, -1)
    cols = [combine(at, [mm[i, j] for i in range(t)]) for j in range(t)]  # A^T M, per column
    y = [combine(at, [cols[j][a] for j in range(t)]) for a in range(m)]  # (A^T M A)[a][b]
    y = jnp.stack([jnp.stack(row, axis=3) for row in y], axis=2)  # (N, th, m, tw, m, O)
    return y.reshape(n, h, wd, -1)


def xla_conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    keep_freed_memory()
    print("batch  side   C ->  O   XLA ms  F(2,3) ms  F(4,3) ms  torch ms  "
          "F(2,3)/XLA  F(4,3)/XLA  max rel err F(2,3), F(4,3)")
    for batch in args.batch_sizes:
        for side, c, o in CASES:
            rng = np.random.default_rng(0)
            x = rng.standard_normal((batch, side, side, c), dtype=np.float32)
            w = rng.standard_normal((3, 3, c, o), dtype=np.float32)
            xd, wd = jax.device_put(x), jax.device_put(w)
            fns = {"xla": jax.jit(xla_conv), "f2": jax.jit(lambda x, w: winograd(2, x, w)),
                   "f4": jax.jit(lambda x, w: winograd(4, x, w))}
            exact = np.asarray(xla_conv(x.astype(np.float64), w.astype(np.float64)))
            err = {k: float(np.max(np.abs(np.asarray(f(xd, wd)) - exact)) / np.max(np.abs(exact)))
                   for k, f in fns.items() if k != "xla"}
            runners = {k: (lambda f=f: f(xd, wd).block_until_ready()) for k, f in fns.items()}
            maps = torch_maps(x, w, 1, 1)
            if maps is not None:
                runners["torch"] = maps[0]
            times = bench.interleaved(runners, args.repeats, 4)
            t = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
            torch_ms = f"{t['torch']:8.2f}" if "torch" in t else "       -"
            print(f"{batch:5d}  {side:4d}  {c:3d} -> {o:2d}  {t['xla']:7.2f}  {t['f2']:9.2f}  "
                  f"{t['f4']:9.2f}  {torch_ms}  {t['f2'] / t['xla']:10.2f}  "
                  f"{t['f4'] / t['xla']:10.2f}  {err['f2']:.1e}, {err['f4']:.1e}", flush=True)


if __name__ == "__main__":
    main()
