"""examples/tiny_cnn_numpy.py, the whole tiny CNN in plain NumPy: every gradient it PRINTS, from
the loss back to the filters and the input, equals `jax.grad` of the same network built from
jcnn's ops (its own comparison is not trusted: the printed text is parsed)."""
import contextlib
import io
import re
from pathlib import Path

import numpy as np
import pytest
from learner_scripts import load

ROOT = Path(__file__).resolve().parents[1]
NUMBERS = re.compile(r"^\s*(-?\d+\.\d+\s*)+$")


@pytest.fixture(scope="module")
def tiny():
    return load("examples/tiny_cnn_numpy.py")


def printed_blocks(text: str) -> dict:
    """{key: the numbers printed under `[key] ...`, in print order}."""
    blocks = {}
    for block in re.split(r"\n(?=\[)", text):
        head = re.match(r"\[(\w+)\]", block)
        if head:
            rows = [line for line in block.splitlines()[1:] if NUMBERS.match(line)]
            blocks[head[1]] = np.array([float(v) for row in rows for v in row.split()])
    return blocks


def in_print_order(a: np.ndarray) -> np.ndarray:
    """How the example prints an array: (H, W, C) as one H x W grid per channel."""
    return np.moveaxis(a, -1, 0).ravel() if a.ndim == 3 else a.ravel()


@pytest.fixture(scope="module")
def printed(tiny) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        tiny.main()
    return out.getvalue()


def test_every_printed_gradient_is_jax_grads(tiny, printed):
    text = printed
    blocks = printed_blocks(text)

    x, label = tiny.load_digit(0)
    params = tiny.init_params(0)
    loss, want = tiny.jax_grads(params, x, label)
    want["dV"] = want["dV"].T  # printed one row per class
    want["dW"] = want["dW"][:, :, 0, :]  # one input channel: printed as 3x3 per filter
    want["W_new"] = params["W"][:, :, 0, :] - tiny.LEARNING_RATE * want["dW"]
    expected = ["dlogits", "dV", "dc", "df", "dp", "da", "dz", "dW", "db", "dx", "W_new"]
    assert list(blocks) == expected  # from the loss backwards, then the step
    for key in expected:
        np.testing.assert_allclose(blocks[key], in_print_order(want[key]), rtol=0, atol=1e-6,
                                   err_msg=key)
    assert f"loss = -log softmax(logits)[{label}] = {loss:.6f}" in text
    # the one filter weight written out as its sum of 36 products
    total = re.search(r"dW\[0,0,0,0\] = x\[0,0\]\*dz\[0,0,0\] .* = (-?[\d.]+)", text)
    assert float(total[1]) == pytest.approx(want["dW"][0, 0, 0], abs=1e-6)
    # the SGD step lowers the loss on this digit
    before, after = map(float, re.search(r"loss before the step ([\d.]+), after ([\d.]+)",
                                         text).groups())
    assert after < before and before == pytest.approx(loss, abs=1e-6)



def test_the_answer_quotes_the_examples_output(printed):
    """docs/answer.md, section 4, quotes lines of the example's output: they are its output."""
    answer = (ROOT / "docs" / "answer.md").read_text()
    quoted = re.search(r"```text\n\$ python examples/tiny_cnn_numpy.py\n(.*?)```", answer,
                       re.DOTALL)[1].splitlines()
    assert quoted
    for line in quoted:
        assert line in printed.splitlines(), line
