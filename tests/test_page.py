"""docs/conv_backprop.html, the page to explore one conv2d's backward pass with the mouse.

* the committed page is what docs/make_page.py writes now, and the numbers embedded in it are
  jcnn's: dW and dX agree with jcnn.naive's loops, and the pairs the page highlights are the
  ones the tied matrix (docs/figures.py) says: summed, they give dW and dX;
* in a real headless browser (Debian's chromium and chromedriver, driven by selenium): hovering
  each filter-gradient weight highlights exactly its pairs and writes jcnn's value, hovering an
  output-gradient cell marks where it flows in dX and dW, every case of the selector, no console
  errors, and a screenshot.
"""
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from learner_scripts import load

from jcnn import naive

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "conv_backprop.html"


@pytest.fixture(scope="module")
def make_page():
    return load("docs/make_page.py")


@pytest.fixture(scope="module")
def embedded():
    """The cases as the committed page carries them."""
    text = PAGE.read_text(encoding="utf-8")
    payload = re.search(r'<script id="data" type="application/json">(.*?)</script>', text,
                        re.DOTALL)[1]
    return json.loads(payload.replace("<\\/", "</"))


def expected_pairs(case) -> set:
    """{(i, j, r, q, y, x)}: the non-zeros of the tied matrix, `which[(y,x), (r,q)] = (i,j)`."""
    x, w = np.asarray(case["X"]), np.asarray(case["W"])
    _, which = load("docs/figures.py").tied_matrix(w[:, :, None, None], x.shape,
                                                   stride=case["stride"], padding=case["padding"])
    out = np.asarray(case["G"]).shape
    return {(*divmod(int(k), w.shape[1]), *np.unravel_index(col, x.shape),
             *np.unravel_index(row, out)) for (row, col), k in np.ndenumerate(which) if k >= 0}


def test_the_committed_page_is_up_to_date(make_page):
    assert PAGE.read_text(encoding="utf-8") == make_page.render(make_page.page_data()), \
        "run: python docs/make_page.py --out docs/conv_backprop.html"


def test_the_pages_numbers_are_jcnns_and_its_pairs_sum_to_them(embedded, make_page):
    assert [(c["name"], c["stride"], c["padding"]) for c in embedded] == list(make_page.CASES)
    for case in embedded:
        x, w, g = (np.asarray(case[k]) for k in ("X", "W", "G"))
        s, p = case["stride"], case["padding"]
        nhwc, hwio = x[None, :, :, None], w[:, :, None, None]
        y = naive.conv2d(nhwc, hwio, stride=s, padding=p)[0, :, :, 0]
        dx, dw, _ = naive.conv2d_backward(g[None, :, :, None], nhwc, hwio, stride=s, padding=p)
        np.testing.assert_allclose(case["Y"], y, atol=1e-12)
        np.testing.assert_allclose(case["dW"], dw[:, :, 0, 0], atol=1e-12)
        np.testing.assert_allclose(case["dX"], dx[0, :, :, 0], atol=1e-12)
        assert case["db"] == pytest.approx(g.sum())
        pairs = {tuple(t) for t in case["pairs"]}
        assert pairs == expected_pairs(case) and len(pairs) == len(case["pairs"])
        by_pairs_dw, by_pairs_dx = np.zeros_like(w), np.zeros_like(x)
        for i, j, r, q, yy, xx in pairs:
            by_pairs_dw[i, j] += x[r, q] * g[yy, xx]
            by_pairs_dx[r, q] += g[yy, xx] * w[i, j]
        np.testing.assert_allclose(by_pairs_dw, case["dW"], atol=1e-12)
        np.testing.assert_allclose(by_pairs_dx, case["dX"], atol=1e-12)


# ---- in a real browser ------------------------------------------------------------------------

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1400,1100")


def _browser_paths():
    return shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="session")
def chromium():
    """(chromium, chromedriver): found, or installed with apt-get when running as root; a
    clear skip only when neither works."""
    if None in _browser_paths() and os.geteuid() == 0 and shutil.which("apt-get"):
        try:
            subprocess.run(["apt-get", "update"], check=True, capture_output=True, timeout=300)
            subprocess.run(["apt-get", "install", "-y", "chromium", "chromium-driver"],
                           check=True, capture_output=True, timeout=600,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        except (subprocess.SubprocessError, OSError) as failure:
            pytest.skip(f"chromium/chromedriver absent and apt-get could not install them: "
                        f"{failure}")
    if None in _browser_paths():
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium "
                    "chromium-driver), and this run cannot install them (not root, or no apt)")
    return _browser_paths()


@pytest.fixture
def driver(chromium, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium[0]
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(options=options,
                               service=webdriver.ChromeService(executable_path=chromium[1]))
    try:
        yield browser
    finally:
        browser.quit()


STATE = """
const cells = {}, tags = {};
for (const td of document.querySelectorAll("td[id]")) {
  for (const cls of td.classList) (cells[cls] = cells[cls] || []).push(td.id);
  if (td.dataset.tag) tags[td.id] = +td.dataset.tag;
}
return [cells, tags, document.getElementById("explain").textContent];
"""


def _state(driver) -> tuple[dict, dict, str]:
    """What the page shows now, in one call: ({(class, grid): {(r, c)}}, {(grid, r, c): the
    term number tagged on that cell}, the explanation's text)."""
    cells, tags, explain = driver.execute_script(STATE)
    marked = {}
    for cls, ids in cells.items():
        for i in ids:
            grid, r, c = i.split("-")
            marked.setdefault((cls, grid), set()).add((int(r), int(c)))
    return marked, {tuple(i.split("-")[:1]) + tuple(map(int, i.split("-")[1:])): t
                    for i, t in tags.items()}, explain


def _hover(driver, element) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    ActionChains(driver).move_to_element(element).perform()


def _some(a: np.ndarray, every: bool) -> list:
    """Every cell of `a`, or (the default run) two opposite corners off the diagonal (where a
    row and a column swapped show) and the centre."""
    cells = list(np.ndindex(a.shape))
    if every:
        return cells
    n, m = a.shape
    return sorted({(0, m - 1), (n - 1, 0), (n // 2, m // 2)})


def test_hovering_shows_the_tied_pairs_and_the_flows(driver, embedded, tmp_path, request):
    """Hovers three cells of dW and of G in every case (every cell with --runslow)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver.get(PAGE.as_uri())
    select = Select(driver.find_element(By.ID, "case"))
    assert [o.text for o in select.options] == [c["name"] for c in embedded]
    for index, case in enumerate(embedded):
        select.select_by_index(index)
        pairs = expected_pairs(case)
        shown = driver.execute_script(
            "const t = {}; for (const td of document.querySelectorAll('td[id]'))"
            " t[td.id] = td.textContent; return t")
        for name in ("X", "W", "Y", "G", "dW", "dX"):  # every number shown is the page's data
            for (r, c), v in np.ndenumerate(np.asarray(case[name])):
                assert float(shown[f"{name}-{r}-{c}"]) == pytest.approx(v, abs=1e-6), \
                    (case["name"], name, r, c)
        padding = driver.find_elements(By.CSS_SELECTOR, "#grid-X td.pad")
        size = np.asarray(case["X"]).shape[0] + 2 * case["padding"]
        assert len(padding) == size * size - np.asarray(case["X"]).size
        every = request.config.getoption("--runslow")
        for i, j in _some(np.asarray(case["dW"]), every):
            value = case["dW"][i][j]
            _hover(driver, driver.find_element(By.ID, f"dW-{i}-{j}"))
            marked, tags, explain = _state(driver)
            mine = {t for t in pairs if t[:2] == (i, j)}
            assert marked.get(("hl", "X")) == {t[2:4] for t in mine}, (case["name"], i, j)
            assert marked.get(("hl", "G")) == {t[4:6] for t in mine}
            assert marked.get(("hl", "W")) == {(i, j)}
            # term k of the written sum is the pair tagged k: X[r,q] and G[y,x] side by side
            assert sorted(tags[("X", *t[2:4])] for t in mine) == list(range(1, len(mine) + 1))
            assert all(tags[("X", *t[2:4])] == tags[("G", *t[4:6])] for t in mine)
            assert f"dW[{i},{j}] = " in explain and f"used at {len(mine)} positions" in explain
            assert float(explain.split("= ")[-1].split()[0]) == pytest.approx(value, abs=1e-6)
        for y, x in _some(np.asarray(case["G"]), every):
            _hover(driver, driver.find_element(By.ID, f"G-{y}-{x}"))
            marked, _, explain = _state(driver)
            mine = {t for t in pairs if t[4:] == (y, x)}
            assert marked.get(("to-dx", "dX")) == {t[2:4] for t in mine}, (case["name"], y, x)
            assert marked.get(("to-dw", "dW")) == {t[:2] for t in mine}
            assert marked.get(("hl", "X")) == {t[2:4] for t in mine}
            assert f"G[{y},{x}] = " in explain
    select.select_by_index(1)
    _hover(driver, driver.find_element(By.ID, "dW-0-0"))
    shot = tmp_path / "conv_backprop.png"
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
