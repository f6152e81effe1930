"""The model gallery page in a real headless Chromium (Debian's chromium + chromium-driver).

The browser is installed by `make test`'s set-up when missing (apt-get, as root); where it
cannot be, every test here is skipped with the reason, never silently.
"""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from registry.datasets import load_digits


def _chromium() -> tuple[str | None, str | None]:
    return shutil.which("chromium"), shutil.which("chromedriver")


# `make test` installs Debian's chromium and chromium-driver first (Makefile, target
# `browser`); where that was impossible these tests are skipped, with the reason.
CHROMIUM, CHROMEDRIVER = _chromium()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="headless Chromium unavailable: `make browser` (apt-get install chromium chromium-driver) "
        "could not install it here",
    ),
]


@pytest.fixture(scope="session")
def browser(server, tmp_path_factory):
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager fetch drivers
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1600",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    client, _ = server
    driver.base = str(client.base_url).rstrip("/")
    yield driver
    driver.quit()


def wait_for(predicate, timeout: float = 30.0, what: str = "condition", interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception:
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def upload(driver, form: str, path) -> None:
    """Send ``path`` through the page's ``form`` (score, latent): its file input, then its button."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, f"{form}-file").send_keys(str(path))
    driver.find_element(By.CSS_SELECTOR, f"#{form}-form button").click()


def open_model(driver, name: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(driver.base + "/")
    wait_for(
        lambda: driver.find_elements(By.CSS_SELECTOR, f"tr[data-model='{name}'] button"), what=f"row {name}"
    )
    driver.find_element(By.CSS_SELECTOR, f"tr[data-model='{name}'] button").click()
    wait_for(lambda: name in driver.find_element(By.ID, "detail-heading").text, what="detail panel")


def test_table_lists_the_trained_models(browser, trained):
    from selenium.webdriver.common.by import By

    browser.get(browser.base + "/")
    rows = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#models tbody tr"), what="table rows")
    names = {r.get_attribute("data-model") for r in rows}
    assert {"flow-digits", "flow-8gaussians", "vae-digits", "gan-8gaussians"} <= names
    # Sortable: clicking a header reorders the rows.
    browser.find_element(By.XPATH, "//th/button[starts-with(., 'name')]").click()
    first = browser.find_elements(By.CSS_SELECTOR, "#models tbody tr")[0].get_attribute("data-model")
    assert first == sorted(names)[-1]


def test_sample_grid_renders_and_changes_with_the_seed(browser):
    from selenium.webdriver.common.by import By

    open_model(browser, "flow-digits")
    img = wait_for(lambda: browser.find_element(By.ID, "sample-grid"), what="sample grid")
    wait_for(
        lambda: browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img),
        what="image load",
    )
    first = img.get_attribute("src")
    assert first.startswith("data:image/png;base64,")
    seed = browser.find_element(By.ID, "seed")
    seed.clear()
    seed.send_keys("7")
    browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", seed)
    wait_for(
        lambda: browser.find_element(By.ID, "sample-grid").get_attribute("src") != first, what="a new grid"
    )


def test_a_step_sampler_s_grid_shows_its_progress_then_the_grid(browser):
    """The grid is drawn from a task (/sample/submit): a progress bar shows the task's status
    (steps done of the total) while it runs, and goes once the grid is drawn. A 1,000-step grid
    of this small model takes under a second, so the bar's last reading is what is checked."""
    from selenium.webdriver.common.by import By

    open_model(browser, "diffusion-digits")
    wait_for(lambda: browser.find_element(By.ID, "sample-grid"), what="the first grid")
    first = browser.find_element(By.ID, "sample-grid").get_attribute("src")
    steps = browser.find_element(By.ID, "steps")
    steps.clear()
    steps.send_keys("1000")
    browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", steps)
    wait_for(
        lambda: browser.find_element(By.ID, "sample-grid").get_attribute("src") != first, what="the new grid"
    )
    bar = browser.find_element(By.ID, "sample-progress")
    assert bar.get_attribute("hidden") is not None
    assert bar.get_attribute("title") == "1000 of 1000 steps"
    assert int(bar.get_attribute("data-polls")) >= 1
    assert "1000 steps" in browser.find_element(By.ID, "sample-grid").get_attribute("alt")


def test_density_heat_map_renders_for_a_2d_model(browser):
    from selenium.webdriver.common.by import By

    open_model(browser, "flow-8gaussians")
    canvas = browser.find_element(By.ID, "density")
    wait_for(lambda: canvas.get_attribute("data-drawn") == "yes", what="heat map")
    colours = browser.execute_script(
        "const c = arguments[0].getContext('2d').getImageData(0, 0, 256, 256).data;"
        "const s = new Set(); for (let i = 0; i < c.length; i += 4 * 97) s.add(c[i] + ',' + c[i+1] + ',' + c[i+2]);"
        "return s.size;",
        canvas,
    )
    assert colours > 10


def test_bad_upload_shows_the_api_error_and_good_upload_scores(browser, tmp_path):
    from selenium.webdriver.common.by import By

    open_model(browser, "flow-digits")
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2,3\n4,5,6\n")
    upload(browser, "score", bad)
    message = wait_for(lambda: browser.find_element(By.ID, "score-error").text, what="error message")
    assert "each row must have 64 values" in message

    good = tmp_path / "good.npy"
    np.save(good, load_digits().test[:3].astype(np.int64))
    upload(browser, "score", good)
    table = wait_for(lambda: browser.find_element(By.ID, "score-table"), what="score table")
    assert len(table.find_elements(By.CSS_SELECTOR, "tbody tr")) == 3
    assert browser.find_element(By.ID, "score-error").text == ""


def test_gallery_asks_for_the_token_and_then_lists_models(browser, train_model, tmp_path):
    """With GENREG_API_TOKEN set the page still loads, asks for the token, then uses it."""
    from selenium.webdriver.common.by import By
    from servers import running_server

    train_model("gaussian", "moons", name="gallery-auth")
    env = {"GENREG_API_TOKEN": "gallery-token", "GENREG_MODELS": "gallery-auth"}
    with running_server(tmp_path / "server.log", **env) as srv:
        browser.get(srv.base + "/")
        status = browser.find_element(By.ID, "models-status")
        wait_for(lambda: "missing bearer token" in status.text, what="the 401 message")
        form = browser.find_element(By.ID, "token-form")
        assert form.is_displayed()
        browser.find_element(By.ID, "token").send_keys("gallery-token")
        form.find_element(By.TAG_NAME, "button").click()
        rows = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#models tbody tr"), what="table rows")
        assert [r.get_attribute("data-model") for r in rows] == ["gallery-auth"]
        assert not browser.find_element(By.ID, "token-form").is_displayed()
        browser.execute_script("window.localStorage.removeItem('genreg-token')")


def click_grid_image(driver, img, col: int, line: int, cols: int = 4) -> None:
    """Click the centre of the grid image in column ``col`` and line ``line`` (16 samples: 4 x 4)."""
    from selenium.webdriver.common.action_chains import ActionChains

    width, height = img.size["width"], img.size["height"]
    x = (col + 0.5) / cols * width - width / 2
    y = (line + 0.5) / cols * height - height / 2
    ActionChains(driver).move_to_element_with_offset(img, int(x), int(y)).click().perform()


def test_latent_panel_reconstructs_traverses_and_interpolates_picked_samples(browser, server):
    """vae-digits (8 latent dimensions): a click on the sample grid fills slot A (reconstruction,
    and a traversal of one grid line per dimension, by KL), the next fills B (a 10-point
    interpolation); a model without a latent space (gaussian-digits) has no panel."""
    from selenium.webdriver.common.by import By

    client, _ = server
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    vae = models["vae-digits"]
    assert vae["latent_dim"] == 8 and vae["image_shape"] == [8, 8, 1]
    assert models["gaussian-digits"]["latent_dim"] is None

    open_model(browser, "vae-digits")
    assert browser.find_element(By.ID, "latent-panel").is_displayed()
    img = wait_for(lambda: browser.find_element(By.ID, "sample-grid"), what="sample grid")
    wait_for(lambda: browser.execute_script("return arguments[0].complete", img), what="image load")

    def drawn(canvas_id: str):
        canvas = browser.find_element(By.ID, canvas_id)
        return canvas if canvas.get_attribute("data-drawn") == "yes" else None

    click_grid_image(browser, img, 0, 0)
    recon = wait_for(lambda: drawn("latent-recon"), what="the reconstruction")
    traverse = wait_for(lambda: drawn("latent-traverse"), what="the traversal")
    assert "sample 1 of the grid" in browser.find_element(By.ID, "latent-a-caption").text
    assert (recon.get_attribute("data-rows"), recon.get_attribute("data-cols")) == ("1", "2")
    # One line of 9 images per latent dimension; the canvas is exactly that tall (a 2-pixel gap).
    assert (traverse.get_attribute("data-rows"), traverse.get_attribute("data-cols")) == ("8", "9")
    cell = int(traverse.get_attribute("data-cell"))
    assert int(traverse.get_attribute("height")) == 8 * cell + 2
    kl = vae["metrics"]["test"]["latent"]["kl_per_dim"]
    order = sorted(range(8), key=lambda d: (-kl[d], d))
    caption = browser.find_element(By.ID, "latent-traverse-caption").text
    assert ", ".join(f"z{d}" for d in order) in caption
    grays = browser.execute_script(
        "const c = arguments[0]; const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "const s = new Set(); for (let i = 0; i < d.length; i += 4) s.add(d[i]); return s.size;",
        traverse,
    )
    assert grays > 10
    assert not browser.find_element(By.ID, "latent-interp-figure").is_displayed()

    click_grid_image(browser, img, 3, 3)  # the next click fills B
    interp = wait_for(lambda: drawn("latent-interp"), what="the interpolation")
    assert "sample 16 of the grid" in browser.find_element(By.ID, "latent-b-caption").text
    assert (interp.get_attribute("data-rows"), interp.get_attribute("data-cols")) == ("1", "10")
    assert browser.find_element(By.ID, "latent-error").text == ""

    open_model(browser, "gaussian-digits")
    assert not browser.find_element(By.ID, "latent-panel").is_displayed()


def test_latent_panel_takes_an_uploaded_row_and_shows_the_api_error(browser, tmp_path):
    """flow-digits (64 latent dimensions): a row of the wrong width shows /encode's error; a
    JSON row fills A, and the traversal stops at 10 dimensions."""
    import json

    from selenium.webdriver.common.by import By

    open_model(browser, "flow-digits")
    assert browser.find_element(By.ID, "latent-panel").is_displayed()
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2,3\n")
    upload(browser, "latent", bad)
    message = wait_for(lambda: browser.find_element(By.ID, "latent-error").text, what="error message")
    assert "each row must have 64 values" in message

    good = tmp_path / "row.json"
    good.write_text(json.dumps(load_digits().test[0].astype(int).tolist()))
    upload(browser, "latent", good)
    traverse = browser.find_element(By.ID, "latent-traverse")
    wait_for(lambda: traverse.get_attribute("data-drawn") == "yes", what="the traversal")
    assert (traverse.get_attribute("data-rows"), traverse.get_attribute("data-cols")) == ("10", "9")
    assert "row 1 of row.json" in browser.find_element(By.ID, "latent-a-caption").text
    assert browser.find_element(By.ID, "latent-error").text == ""
    # A flow is exact: A's reconstruction (x + u, floored to its level) is A itself. The canvas
    # is two images side by side, each after a 2-pixel gap.
    recon = browser.find_element(By.ID, "latent-recon")
    wait_for(lambda: recon.get_attribute("data-drawn") == "yes", what="the reconstruction")
    halves = browser.execute_script(
        "const c = arguments[0], ctx = c.getContext('2d'), w = (c.width - 2) / 2;"
        "const a = ctx.getImageData(2, 2, w - 2, c.height - 4).data;"
        "const b = ctx.getImageData(2 + w, 2, w - 2, c.height - 4).data;"
        "return [Array.from(a).join(), Array.from(b).join(), new Set(a).size];",
        recon,
    )
    assert halves[0] == halves[1] and halves[2] > 2


COND = "categorical-digits-cond"


def test_class_picker_draws_a_class_and_the_grid_per_class(browser, server):
    """categorical-digits-cond (10 classes, no guidance): the picker lists "any class" and the
    10 classes by name; class 7 sends label 7 (the grid is /sample's with label 7, same seed);
    the class grid is one line of 8 per class. An unconditional model has none of it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    client, _ = server
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    cond = models[COND]
    assert cond["classes"] == 10 and cond["guidance"] is False

    open_model(browser, COND)
    picker = browser.find_element(By.ID, "class-picker")
    assert picker.is_displayed()
    names = [o.text for o in Select(picker).options]
    assert names == ["any class (drawn from p(y))", *cond["class_names"]]
    assert not browser.find_element(By.ID, "guidance").is_displayed()

    def grid(attribute: str):
        return browser.find_element(By.ID, "sample-grid").get_attribute(attribute)

    first = wait_for(lambda: grid("src"), what="the first grid")
    Select(picker).select_by_value("7")  # a change: the grid is drawn again, of class 7
    body = {"model": cond["tag"], "n": 16, "seed": 0, "temperature": 1.0, "format": "png", "label": 7}
    expected = "data:image/png;base64," + client.post("/sample", json=body).json()["png"]
    assert expected != first
    wait_for(lambda: grid("src") == expected, what="the class-7 grid")
    assert f"class {cond['class_names'][7]}" in grid("alt")

    browser.find_element(By.ID, "class-grid").click()
    canvas = browser.find_element(By.ID, "class-grid-canvas")
    wait_for(lambda: canvas.get_attribute("data-drawn") == "yes", what="the class grid")
    assert (canvas.get_attribute("data-rows"), canvas.get_attribute("data-cols")) == ("10", "8")
    assert int(canvas.get_attribute("height")) == 10 * int(canvas.get_attribute("data-cell")) + 2
    assert "one row per class" in browser.find_element(By.ID, "class-grid-caption").text
    assert browser.find_element(By.ID, "class-grid-error").text == ""

    open_model(browser, "categorical-digits")
    for element in ("class-picker", "guidance", "class-grid", "class-grid-figure"):
        assert not browser.find_element(By.ID, element).is_displayed(), element


def test_classify_shows_each_row_s_class_and_posterior(browser, server, tmp_path):
    """The score form's classify: each row's predicted class by name and p(class | x), as
    /score answers, from exact likelihoods; a wrong-width file shows the server's message."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    client, _ = server
    cond = {m["name"]: m for m in client.get("/models").json()["models"]}[COND]
    open_model(browser, COND)
    Select(browser.find_element(By.ID, "score-kind")).select_by_value("classify")
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2,3\n")
    upload(browser, "score", bad)
    message = wait_for(lambda: browser.find_element(By.ID, "score-error").text, what="error message")
    assert "each row must have 64 values" in message

    x = load_digits().test[:4].astype(np.int64)
    good = tmp_path / "rows.npy"
    np.save(good, x)
    upload(browser, "score", good)
    table = wait_for(lambda: browser.find_element(By.ID, "score-table"), what="classify table")
    answer = client.post("/score", json={"model": cond["tag"], "x": x.tolist(), "kind": "classify"}).json()
    assert answer["source"] == "log_prob"
    rows = table.find_elements(By.CSS_SELECTOR, "tbody tr")
    cells = [[td.text for td in tr.find_elements(By.TAG_NAME, "td")] for tr in rows]
    predicted = zip(answer["labels"], answer["scores"], strict=True)
    assert cells == [[str(i), cond["class_names"][y], f"{p:.3f}"] for i, (y, p) in enumerate(predicted)]
    assert "exact likelihoods" in table.find_element(By.TAG_NAME, "caption").text
    assert browser.find_element(By.ID, "score-error").text == ""
