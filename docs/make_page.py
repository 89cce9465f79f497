"""Writes docs/conv_backprop.html: one conv2d's backward pass to explore with the mouse.

    python docs/make_page.py --out docs/conv_backprop.html

A 5x5 input X, a 3x3 filter W and an upstream gradient G = dL/dY, in three cases (stride 1;
stride 2; padding 1). Every number on the page (Y, dX, dW, db) is computed here by jcnn
(`jcnn.conv2d` and `jax.grad` through its hand-derived rule, float64) and embedded as JSON; the
page itself is one self-contained HTML file with its script inline: no network, no build step.
On the page:

* hovering a filter-gradient weight dW[i,j] highlights every input pixel X[r,q] and output
  gradient G[y,x] whose product sums into it (one pair per position the filter visited: the
  weight is tied) and writes the sum out;
* hovering an output-gradient cell G[y,x] shows where it flows: the dX cells it reaches (times
  the filter weight that connected them) and the dW cells (times the input pixel).

The output is deterministic: tests/test_page.py regenerates it and compares it with the
committed page, then drives the page in a headless browser.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jcnn

X = np.array([[1, 2, 0, 1, 3],
              [0, 1, 3, 2, 1],
              [2, 1, 0, 1, 0],
              [1, 3, 2, 0, 2],
              [0, 1, 1, 2, 1]], dtype=np.float64)
W = np.array([[1, 0, -1],
              [2, 1, 0],
              [0, -1, 1]], dtype=np.float64)
#: (name, stride, padding)
CASES = (("stride 1, no padding", 1, 0), ("stride 2, no padding", 2, 0),
         ("stride 1, padding 1", 1, 1))


def upstream_gradient(shape) -> np.ndarray:
    """A G with small integer entries of both signs: G[y,x] = (2y + 3x + 1) mod 5 - 2."""
    y, x = np.indices(shape)
    return ((2 * y + 3 * x + 1) % 5 - 2).astype(np.float64)


def pairs(h: int, w: int, k: int, stride: int, padding: int, out: int) -> list:
    """Every (i, j, r, q, y, x) with X[r,q] * W[i,j] inside Y[y,x]: r = y*s + i - p,
    q = x*s + j - p, on the image (taps on the padding read 0 and are left out)."""
    return [(i, j, y * stride + i - padding, x * stride + j - padding, y, x)
            for y in range(out) for x in range(out) for i in range(k) for j in range(k)
            if 0 <= y * stride + i - padding < h and 0 <= x * stride + j - padding < w]


def case_data(name: str, stride: int, padding: int) -> dict:
    """One case's numbers, all from jcnn, and its pairs."""
    with jax.enable_x64(True):
        x4, w4 = jnp.asarray(X)[None, :, :, None], jnp.asarray(W)[:, :, None, None]
        b = jnp.zeros(1)
        y = jcnn.conv2d(x4, w4, b, stride=stride, padding=padding)
        g = upstream_gradient(y.shape[1:3])

        def loss(x, w, b):
            return jnp.sum(jcnn.conv2d(x, w, b, stride=stride, padding=padding)[0, :, :, 0] * g)
        dx, dw, db = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(x4, w4, b)
    out = g.shape[0]
    return {"name": name, "stride": stride, "padding": padding,
            "X": X.tolist(), "W": W.tolist(), "Y": np.asarray(y)[0, :, :, 0].tolist(),
            "G": g.tolist(), "dX": np.asarray(dx)[0, :, :, 0].tolist(),
            "dW": np.asarray(dw)[:, :, 0, 0].tolist(), "db": float(db[0]),
            "pairs": [list(p) for p in pairs(*X.shape, W.shape[0], stride, padding, out)]}


def page_data() -> list[dict]:
    return [case_data(*case) for case in CASES]


def render(data: list[dict]) -> str:
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    return TEMPLATE.replace("/*DATA*/", payload)


TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Backpropagation through one convolution, to explore</title>
<style>
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 70em; }
h1 { font-size: 1.3em; }
p.lead { max-width: 60em; line-height: 1.4; }
#grids { display: flex; flex-wrap: wrap; gap: 1.6em; align-items: flex-start; margin: 1em 0; }
.panel h2 { font-size: 0.95em; margin: 0 0 0.3em 0; font-weight: normal; }
table.grid { border-collapse: collapse; }
table.grid td { width: 2.6em; height: 2.1em; text-align: center; border: 1px solid #bbb;
  font-family: monospace; font-size: 0.95em; background: #fafafa; }
table.grid td.pad { background: #e4e4e4; color: #999; }
table.grid td.hover { outline: 3px solid #222; }
table.grid td.hl { background: #ffd54f; }
table.grid td.to-dx, table.grid td.to-dw { background: #81c784; }
table.grid td[data-tag]::after { content: attr(data-tag); font-size: 0.65em;
  vertical-align: super; color: #b03000; margin-left: 0.1em; }
#grid-dW td, #grid-G td { cursor: pointer; }
#explain { font-family: monospace; white-space: pre-wrap; background: #f3f3f3; padding: 0.8em;
  min-height: 6em; max-width: 68em; line-height: 1.5; }
</style>
</head>
<body>
<h1>Backpropagation through one convolution: hover the numbers</h1>
<p class="lead">X is the input, W the filter, Y = conv2d(X, W) and G = dL/dY the gradient handed
down by the layers above. <b>Hover a cell of dW</b>: the highlighted pairs, one input pixel and
one output gradient per position the filter visited, are the products that add up to that
filter gradient (the same weight was used at every position: it is <i>tied</i>).
<b>Hover a cell of G</b>: yellow shows the input pixels its output read, green where
that gradient flows, into dX (times the filter
weight that connected them) and into dW (times the input pixel). Every number was computed by
jcnn (its hand-derived conv2d rule, float64) and written into this page by
<code>docs/make_page.py</code>.</p>
<label for="case">case: </label><select id="case"></select>
<div id="grids"></div>
<div id="explain">Hover a cell of dW or of G.</div>
<script id="data" type="application/json">/*DATA*/</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("data").textContent);
const fmt = v => String(Math.round(v * 1e6) / 1e6);
const lit = v => (v < 0 ? "(" + fmt(v) + ")" : fmt(v));
let current = DATA[0];

function cell(name, r, c) { return document.getElementById(name + "-" + r + "-" + c); }

function table(name, rows, pad) {
  const t = document.createElement("table");
  t.className = "grid";
  t.id = "grid-" + name;
  const n = rows.length, m = rows[0].length;
  for (let r = -pad; r < n + pad; r++) {
    const tr = t.insertRow();
    for (let c = -pad; c < m + pad; c++) {
      const td = tr.insertCell();
      if (r < 0 || c < 0 || r >= n || c >= m) {
        td.className = "pad";
        td.textContent = "0";
        continue;
      }
      td.id = name + "-" + r + "-" + c;
      td.dataset.r = r; td.dataset.c = c;
      td.textContent = fmt(rows[r][c]);
    }
  }
  return t;
}

function panel(title, name, rows, pad) {
  const div = document.createElement("div");
  div.className = "panel";
  const h = document.createElement("h2");
  h.textContent = title;
  div.appendChild(h);
  div.appendChild(table(name, rows, pad));
  return div;
}

function clear() {
  for (const cls of ["hl", "to-dx", "to-dw", "hover"]) {
    for (const el of Array.from(document.querySelectorAll("td." + cls))) el.classList.remove(cls);
  }
  for (const el of Array.from(document.querySelectorAll("td[data-tag]"))) delete el.dataset.tag;
  document.getElementById("explain").textContent = "Hover a cell of dW or of G.";
}

function showWeight(i, j) {
  const d = current, terms = d.pairs.filter(p => p[0] === i && p[1] === j);
  cell("dW", i, j).classList.add("hover");
  cell("W", i, j).classList.add("hl");
  terms.forEach(([, , r, q, y, x], k) => {  // term k+1: its X and its G carry the tag k+1
    cell("X", r, q).classList.add("hl");
    cell("G", y, x).classList.add("hl");
    cell("X", r, q).dataset.tag = k + 1;
    cell("G", y, x).dataset.tag = k + 1;
  });
  const names = terms.map(([, , r, q, y, x]) => "X[" + r + "," + q + "]*G[" + y + "," + x + "]");
  const values = terms.map(([, , r, q, y, x]) => lit(d.X[r][q]) + "*" + lit(d.G[y][x]));
  document.getElementById("explain").textContent =
    "W[" + i + "," + j + "] was used at " + terms.length +
    " positions, so its gradient is the sum of " + terms.length +
    " products (the small numbers pair each X with its G):\\n" +
    "dW[" + i + "," + j + "] = " + names.join(" + ") + "\\n        = " + values.join(" + ") +
    "\\n        = " + fmt(d.dW[i][j]) +
    (d.padding ? "\\n(taps that landed on the zero padding add 0 and are left out)" : "");
}

function showGradient(y, x) {
  const d = current, flows = d.pairs.filter(p => p[4] === y && p[5] === x);
  cell("G", y, x).classList.add("hover");
  const lines = [];
  for (const [i, j, r, q] of flows) {
    cell("dX", r, q).classList.add("to-dx");
    cell("dW", i, j).classList.add("to-dw");
    cell("X", r, q).classList.add("hl");
    lines.push("dX[" + r + "," + q + "] += " + lit(d.G[y][x]) + "*W[" + i + "," + j + "] = " +
               lit(d.G[y][x] * d.W[i][j]) + "      dW[" + i + "," + j + "] += X[" + r + "," + q +
               "]*" + lit(d.G[y][x]) + " = " + lit(d.X[r][q] * d.G[y][x]));
  }
  document.getElementById("explain").textContent =
    "G[" + y + "," + x + "] = " + fmt(d.G[y][x]) + " came from Y[" + y + "," + x +
    "], which read the " + flows.length + " yellow input pixels, one per filter weight." +
    "\\nIt flows back along the same " + flows.length + " connections:\\n" + lines.join("\\n");
}

function render(index) {
  current = DATA[index];
  const d = current, grids = document.getElementById("grids");
  grids.textContent = "";
  grids.appendChild(panel("X, input" + (d.padding ? " (grey: padding " + d.padding + ")" : ""),
                          "X", d.X, d.padding));
  grids.appendChild(panel("W, filter", "W", d.W, 0));
  grids.appendChild(panel("Y = conv2d(X, W), stride " + d.stride, "Y", d.Y, 0));
  grids.appendChild(panel("G = dL/dY (given)", "G", d.G, 0));
  grids.appendChild(panel("dW, filter gradient", "dW", d.dW, 0));
  grids.appendChild(panel("dX, input gradient", "dX", d.dX, 0));
  for (const [grid, show] of [["dW", showWeight], ["G", showGradient]]) {
    for (const td of Array.from(document.querySelectorAll("#grid-" + grid + " td[id]"))) {
      td.addEventListener("mouseenter", () => { clear(); show(+td.dataset.r, +td.dataset.c); });
      td.addEventListener("mouseleave", clear);
    }
  }
  clear();
}

const select = document.getElementById("case");
DATA.forEach((d, k) => {
  const option = document.createElement("option");
  option.value = k;
  option.textContent = d.name;
  select.appendChild(option);
});
select.addEventListener("change", () => render(+select.value));
render(0);
</script>
</body>
</html>
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent
                        / "conv_backprop.html", help="the HTML file to write")
    args = parser.parse_args(argv)
    args.out.write_text(render(page_data()), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
