"""examples/exercises.py's self-checks (docs/exercises.md): the reference solutions pass every
one; the blanks as shipped fail every one; and wrong answers, the classic bugs, fail theirs."""
import re
from pathlib import Path
from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest
from learner_scripts import load

import jcnn

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exercises():
    return load("examples/exercises.py")


@pytest.fixture(scope="module")
def solutions(exercises):
    return exercises.solutions()


def test_the_solutions_pass_every_check(exercises, capsys):
    assert exercises.main(["--solutions"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"exercise {name}: right" for name, _ in exercises.CHECKS]


def test_the_blanks_fail_every_check(exercises, capsys):
    results = exercises.check_all(exercises)
    assert all(results.values()), results
    assert exercises.main([]) == 1
    assert "not yet" in capsys.readouterr().out


def _unflipped(w, g):
    """The classic bug: the filter's channels swapped but not rotated."""
    kh, kw = w.shape[:2]
    return jcnn.conv2d(g, w.swapaxes(2, 3), padding=((kh - 1, kh - 1), (kw - 1, kw - 1)))


def test_wrong_answers_fail_their_checks(exercises, solutions):
    assert exercises.check_1(SimpleNamespace(ANSWER_1=solutions.ANSWER_1 + 1))
    assert exercises.check_1(SimpleNamespace(ANSWER_1=solutions.ANSWER_1)) is None

    def dx_forgotten(g, x, w, stride, padding):
        _, dw = solutions.conv2d_backward_loops(g, x, w, stride, padding)
        return np.zeros_like(x), dw

    def padding_ignored(g, x, w, stride, padding):  # windows not shifted by the padding
        return solutions.conv2d_backward_loops(g, x, w, stride, 0)

    assert "dx differs" in exercises.check_2(SimpleNamespace(conv2d_backward_loops=dx_forgotten))
    assert exercises.check_2(SimpleNamespace(conv2d_backward_loops=padding_ignored))

    problem = exercises.check_3(SimpleNamespace(input_gradient=_unflipped))
    assert "vjp      x (arg 0)" in problem and re.search(r"vjp +x \(arg 0\).*FAIL", problem)
    assert re.search(r"vjp +w \(arg 1\).*ok", problem)  # dW does not involve the flip


def test_exercise_1_in_the_page_and_the_text(exercises, solutions):
    """docs/exercises.md states exercise 1 with the numbers the check uses, and they are the
    page's stride-2 case (docs/conv_backprop.html), where the learner can hover the answer."""
    page = load("docs/make_page.py")
    np.testing.assert_array_equal(exercises.X1, page.X)
    np.testing.assert_array_equal(exercises.G1, page.upstream_gradient((2, 2)))
    assert ("stride 2, no padding", 2, 0) in page.CASES
    text = (ROOT / "docs" / "exercises.md").read_text()
    for row in exercises.X1.astype(int).tolist() + exercises.G1.astype(int).tolist():
        assert str(row) in text
    assert "dW[1,2]" in text and f"= {solutions.ANSWER_1}" not in text  # no spoiler
    assert jnp.isfinite(solutions.ANSWER_1)
