"""A whole tiny CNN trained one step on ONE real digit, forward and backward in plain NumPy,
every gradient printed from the loss back to the filters, then checked against `jax.grad`.

    python examples/tiny_cnn_numpy.py

The network (the image is 8x8, one channel; every array is (height, width, channels)):

    x (8x8x1) -> conv 3x3, 2 filters -> z (6x6x2) -> ReLU -> a (6x6x2) -> max-pool 2x2 -> p (3x3x2)
      -> flatten -> f (18) -> dense -> logits (10) -> softmax cross-entropy with the label -> loss

The backward pass walks the same list in reverse. Each step gets the gradient of the loss with
respect to its OUTPUT (the "upstream gradient", called d<name> here) and returns the gradient
with respect to its INPUT (and its weights, if it has any):

    dlogits = softmax(logits) - onehot(label)           cross-entropy
    dV = outer(f, dlogits), dc = dlogits, df = V dlogits  dense (a plain matrix layer)
    dp = df reshaped back to 3x3x2                        flatten: only renumbers, no arithmetic
    da = dp routed to each window's first maximum         max-pool: 0 everywhere else
    dz = da where z > 0, else 0                           ReLU: a mask
    dW[i,j,0,o] = sum over positions (y,x) of x[y+i, x+j] * dz[y,x,o]     conv: a SUM over uses
    db[o] = sum over positions of dz[y,x,o]
    dx = dz correlated with the filters rotated 180 degrees             (for a layer below)

Only NumPy and Python loops compute the network; jcnn appears at the end, once, to build the
same network from its ops and let `jax.grad` say whether every number above is right
(tests/test_tiny_cnn.py checks the printed numbers the same way). docs/answer.md explains it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

DIGITS = Path(__file__).resolve().parents[1] / "jcnn" / "assets" / "digits.npz"
LEARNING_RATE = 0.1
POOL = 2  # 2x2 windows, stride 2


def load_digit(index: int = 0) -> tuple[np.ndarray, int]:
    """One training image of the embedded digits as (8, 8, 1) floats in [0, 1], and its label."""
    with np.load(DIGITS) as data:
        return data["train_images"][index, :, :, None] / 16.0, int(data["train_labels"][index])


def init_params(seed: int = 0) -> dict:
    """W: two 3x3 filters, HWIO (3, 3, 1, 2); b: their biases; V: the dense weights (18, 10);
    c: the dense biases."""
    rng = np.random.default_rng(seed)
    return {"W": 0.5 * rng.standard_normal((3, 3, 1, 2)), "b": np.array([0.1, -0.1]),
            "V": 0.3 * rng.standard_normal((18, 10)), "c": np.zeros(10)}


# ---- forward ----------------------------------------------------------------------------------

def conv(x, w, b):
    """z[y,x,o] = sum_{i,j,c} x[y+i, x+j, c] * w[i,j,c,o] + b[o]   (stride 1, no padding)."""
    kh, kw, _, out = w.shape
    oh, ow = x.shape[0] - kh + 1, x.shape[1] - kw + 1
    z = np.zeros((oh, ow, out))
    for y in range(oh):
        for xx in range(ow):
            for o in range(out):
                z[y, xx, o] = np.sum(x[y:y + kh, xx:xx + kw, :] * w[:, :, :, o]) + b[o]
    return z


def max_pool(a):
    """p[y,x,c] = max of the 2x2 window; also returns where each window's FIRST maximum is
    (row-major order), which the backward needs."""
    oh, ow, ch = a.shape[0] // POOL, a.shape[1] // POOL, a.shape[2]
    p, winner = np.zeros((oh, ow, ch)), {}
    for y in range(oh):
        for xx in range(ow):
            for c in range(ch):
                window = a[y * POOL:(y + 1) * POOL, xx * POOL:(xx + 1) * POOL, c]
                r, q = np.unravel_index(np.argmax(window), window.shape)  # argmax: the first
                p[y, xx, c] = window[r, q]
                winner[y, xx, c] = (y * POOL + r, xx * POOL + q)
    return p, winner


def log_softmax(v):
    v = v - v.max()
    return v - np.log(np.sum(np.exp(v)))


def forward(params: dict, x: np.ndarray, label: int) -> dict:
    """Every intermediate value, kept for the backward pass."""
    z = conv(x, params["W"], params["b"])
    a = np.maximum(z, 0.0)
    p, winner = max_pool(a)
    f = p.reshape(-1)  # flatten, row-major: f[(y*3 + x)*2 + c] = p[y, x, c]
    logits = f @ params["V"] + params["c"]
    loss = -log_softmax(logits)[label]
    return dict(x=x, z=z, a=a, p=p, winner=winner, f=f, logits=logits, loss=loss, label=label)


# ---- backward ---------------------------------------------------------------------------------

def backward(params: dict, fw: dict) -> dict:
    """The gradient of the loss with respect to every intermediate value and every weight,
    computed from the loss backwards, one layer at a time."""
    g = {}
    # cross-entropy: d(-log softmax(logits)[label]) / dlogits = probabilities - onehot(label)
    g["dlogits"] = np.exp(log_softmax(fw["logits"]))
    g["dlogits"][fw["label"]] -= 1.0
    # dense, logits = f @ V + c: each V[k,m] multiplies f[k] into logits[m] once
    g["dV"] = np.outer(fw["f"], g["dlogits"])
    g["dc"] = g["dlogits"].copy()
    g["df"] = params["V"] @ g["dlogits"]
    # flatten only renumbered p's entries, so its backward puts each number back where it came
    # from: the inverse reshape (the same row-major order as the forward)
    g["dp"] = g["df"].reshape(fw["p"].shape)
    # max-pool: each window's output WAS its first maximum, so its gradient goes there, and
    # every other element of the window gets 0
    g["da"] = np.zeros_like(fw["a"])
    for (y, xx, c), (r, q) in fw["winner"].items():
        g["da"][r, q, c] += g["dp"][y, xx, c]
    # ReLU: the gradient passes where z > 0 and stops elsewhere
    g["dz"] = g["da"] * (fw["z"] > 0)
    # conv: W[i,j,c,o] is used at every output position (y, x), multiplying x[y+i, x+j, c];
    # its gradient is the SUM over those uses; b[o] is added at every position
    x, w, dz = fw["x"], params["W"], g["dz"]
    kh, kw = w.shape[:2]
    g["dW"] = np.zeros_like(w)
    for i in range(kh):
        for j in range(kw):
            for c in range(w.shape[2]):
                for o in range(w.shape[3]):
                    g["dW"][i, j, c, o] = np.sum(
                        x[i:i + dz.shape[0], j:j + dz.shape[1], c] * dz[:, :, o])
    g["db"] = dz.sum(axis=(0, 1))
    # the input gradient, as a layer below would need it: dz padded by k-1 zeros and
    # correlated with every filter rotated by 180 degrees
    padded = np.pad(dz, ((kh - 1, kh - 1), (kw - 1, kw - 1), (0, 0)))
    rotated = w[::-1, ::-1]
    g["dx"] = np.zeros_like(x)
    for r in range(x.shape[0]):
        for q in range(x.shape[1]):
            for c in range(x.shape[2]):
                g["dx"][r, q, c] = np.sum(padded[r:r + kh, q:q + kw, :] * rotated[:, :, c, :])
    return g


def sgd_step(params: dict, grads: dict, lr: float = LEARNING_RATE) -> dict:
    """W <- W - lr * dW, for every weight."""
    return {k: v - lr * grads["d" + k] for k, v in params.items()}


# ---- the same network from jcnn's ops, differentiated by jax.grad -----------------------------

#: the intermediate values whose gradients the backward computes, in the forward's order
PROBED = ("z", "a", "p", "f", "logits")


def jax_grads(params: dict, x: np.ndarray, label: int) -> tuple[float, dict]:
    """The loss and the same gradients, from `jax.grad` through jcnn's ops (float64).

    The gradient with respect to an intermediate value (dz, da, ...) is found by adding a zero
    `probe` to it in the forward: d loss / d probe is d loss / d value."""
    import jax
    import jax.numpy as jnp

    import jcnn

    def loss(params, probes, x):
        z = jcnn.conv2d(x[None], params["W"], params["b"]) + probes["z"]
        a = jcnn.relu(z) + probes["a"]
        p = jcnn.max_pool2d(a, POOL) + probes["p"]
        f = jcnn.flatten(p) + probes["f"]
        logits = jcnn.dense(f, params["V"], params["c"]) + probes["logits"]
        return jcnn.softmax_cross_entropy(logits, jnp.array([label]))

    with jax.enable_x64(True):
        fw = forward(params, x, label)
        probes = {k: jnp.zeros((1, *np.shape(fw[k]))) for k in PROBED}
        params64 = {k: jnp.asarray(v, jnp.float64) for k, v in params.items()}
        x64 = jnp.asarray(x, jnp.float64)
        value, (dparams, dprobes, dx) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(
            params64, probes, x64)
        grads = {"d" + k: np.asarray(v) for k, v in dparams.items()}
        grads.update({"d" + k: np.asarray(v)[0] for k, v in dprobes.items()})
        grads["dx"] = np.asarray(dx)
        return float(value), grads


# ---- printing ---------------------------------------------------------------------------------

def show(key: str, a: np.ndarray, what: str) -> None:
    """`[key] what`, then the numbers: a (H, W, C) array as one H x W grid per channel."""
    print(f"\n[{key}] {what}")
    a = np.asarray(a) + 0.0  # -0.0 (a negative gradient times a 0 mask) prints as 0
    if a.ndim == 3:
        for c in range(a.shape[2]):
            print(f"  channel {c}:")
            for row in a[:, :, c]:
                print("   " + " ".join(f"{v:10.6f}" for v in row))
    else:
        for row in np.atleast_2d(a):
            print("   " + " ".join(f"{v:10.6f}" for v in row))


def main() -> None:
    x, label = load_digit(0)
    params = init_params(0)
    fw = forward(params, x, label)
    print(f"One 8x8 digit, label {label}; loss = -log softmax(logits)[{label}] = "
          f"{fw['loss']:.6f}")
    print("\nBACKWARD: each layer turns the gradient at its output into the gradient at its "
          "input.")
    g = backward(params, fw)
    show("dlogits", g["dlogits"], "cross-entropy: softmax(logits) - onehot(label), 10 numbers")
    show("dV", g["dV"].T, "dense weights: dV[k,m] = f[k] * dlogits[m] (printed as 10 rows of "
         "18, one per class)")
    show("dc", g["dc"], "dense biases: dc = dlogits")
    show("df", g["df"], "dense input: df[k] = sum_m V[k,m] * dlogits[m], 18 numbers")
    show("dp", g["dp"], "flatten, backwards: the 18 numbers put back as 3x3x2. Flatten only "
         "numbered p's entries\n    f[(y*3 + x)*2 + c] = p[y,x,c] (row-major, channels "
         "fastest); the backward undoes the numbering")
    show("da", g["da"], "max-pool, backwards: each window's gradient goes to its first "
         "maximum; the other 3 get 0")
    show("dz", g["dz"], "ReLU, backwards: da where z > 0, 0 where the unit was off")
    o = 0
    terms = [f"x[{y},{xx}]*dz[{y},{xx},{o}]" for y in range(2) for xx in range(2)]
    print(f"\nconv, backwards. The filter weight W[0,0,0,{o}] multiplied x[y, x] into "
          f"z[y,x,{o}] at every one of the 36 positions,\nso its gradient is the sum of 36 "
          f"products:  dW[0,0,0,{o}] = {' + '.join(terms)} + ... = {g['dW'][0, 0, 0, o]:.6f}")
    show("dW", g["dW"][:, :, 0, :], "filter gradient: dW[i,j,0,o] = sum_{y,x} x[y+i, x+j] * "
         "dz[y,x,o] (one 3x3 grid per filter)")
    show("db", g["db"], "filter biases: db[o] = sum_{y,x} dz[y,x,o]")
    show("dx", g["dx"], "input gradient (for a layer below; none here): dz padded by 2, "
         "correlated with the filters rotated 180 degrees")

    new = sgd_step(params, g)
    show("W_new", new["W"][:, :, 0, :], f"one SGD step: W - {LEARNING_RATE} * dW")
    after = forward(new, x, label)["loss"]
    print(f"\nloss before the step {fw['loss']:.6f}, after {after:.6f}")

    value, want = jax_grads(params, x, label)
    worst = max(float(np.max(np.abs(g[k] - want[k]))) for k in want)
    print(f"\njax.grad through the same network built from jcnn ops: loss {value:.6f}; "
          f"largest difference from the NumPy gradients above over {sorted(want)}: {worst:.1e}")


if __name__ == "__main__":
    main()
