"""The page at ``/`` in a real headless Chromium (Debian's chromium + chromium-driver, which ``.ci/run`` installs):
the chosen image is shown, a busy line appears, answers come a page of 50 tasks at a time out of 120, the search
box filters the answers it has without running the model again, a failed request shows its one-line error with no
answer left over from the previous file, and with --auth-everything the page loads and asks for the key."""

import base64
import shutil
import time

import numpy as np
import pytest
import torch
from launch import start_server, stop_server
from PIL import Image

import adaptformer

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER), reason="no chromium + chromedriver here (apt-get install chromium chromium-driver)"
)


@pytest.fixture(scope="module")
def browser_and_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("page")
    torch.manual_seed(0)
    model = adaptformer.create_model("adaptformer/vit-tiny-cifar10", "linear", num_classes=3)
    adaptformer.save_task(model, root / "tasks" / "t000.safetensors")
    for k in range(1, 120):
        shutil.copy(root / "tasks" / "t000.safetensors", root / "tasks" / f"t{k:03d}.safetensors")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "a.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    process, url = start_server(["--task-dir", str(root / "tasks"), "--precision", "fp32", "--max-resident", "64"])
    driver = chromium()
    yield driver, url, root
    driver.quit()
    stop_server(process)


def chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(60)
    return driver


def wait_for(condition, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("the page did not get there in time")


def predict_requests(url: str) -> float:
    """POST /predict requests the server has answered (from its /metrics)."""
    import httpx

    total = 0.0
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("adaptformer_requests_total{") and 'route="/predict"' in line and 'method="POST"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def rows(driver):
    return driver.find_elements("css selector", "#results tbody tr")


def test_the_page_pages_searches_previews_and_never_shows_stale_answers(browser_and_server):
    driver, url, root = browser_and_server
    driver.get(f"{url}/")
    text = lambda element_id: driver.find_element("id", element_id).text  # noqa: E731
    wait_for(lambda: text("count") == "120")
    assert text("pageinfo") == "tasks 1-50 of 120"
    driver.find_element("id", "file").send_keys(str(root / "a.png"))
    assert wait_for(lambda: len(rows(driver)) == 50)
    assert driver.find_element("id", "preview").get_attribute("src").startswith("blob:")
    assert rows(driver)[0].text.startswith("t000") and "%" in rows(driver)[0].text
    driver.find_element("id", "next").click()
    wait_for(lambda: len(rows(driver)) == 50 and rows(driver)[0].text.startswith("t050"))
    driver.find_element("id", "next").click()
    wait_for(lambda: len(rows(driver)) == 20 and text("pageinfo") == "tasks 101-120 of 120")
    runs = predict_requests(url)
    driver.find_element("id", "search").send_keys("t11")  # three keystrokes, tasks all answered already
    wait_for(lambda: len(rows(driver)) == 10 and text("pageinfo") == "tasks 1-10 of 10")
    time.sleep(0.5)  # past the search's debounce
    assert predict_requests(url) == runs  # the search filtered the answers it had: the model did not run again
    driver.find_element("id", "file").send_keys(str(root / "broken.png"))  # the same input, a new file
    error = wait_for(lambda: text("error"))
    assert error.startswith("415: ") and "not a readable image" in error and "object" not in error
    assert rows(driver) == []  # the previous image's answers are gone
    assert not driver.find_element("id", "busy").is_displayed()
    logs = [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and "favicon" not in e["message"]]
    assert [e for e in logs if "415" not in e["message"]] == []  # no script error; only the refused request


def test_with_auth_everything_the_page_loads_asks_for_the_key_and_then_lists_the_tasks(tmp_path):
    key = "k" * 8 + "-page-key-0123456789"
    torch.manual_seed(0)
    model = adaptformer.create_model("adaptformer/vit-tiny-cifar10", "linear", num_classes=3)
    adaptformer.save_task(model, tmp_path / "tasks" / "only.safetensors")
    process, url = start_server(["--task-dir", str(tmp_path / "tasks"), "--api-key", key, "--auth-everything"])
    driver = chromium()
    try:
        driver.get(f"{url}/")
        keyrow = driver.find_element("id", "keyrow")
        wait_for(keyrow.is_displayed)  # its first call answered 401: it asks
        assert driver.find_element("id", "error").text.startswith("401: missing or wrong API key")
        driver.find_element("id", "key").send_keys(key)
        driver.find_element("id", "usekey").click()
        wait_for(lambda: driver.find_element("id", "count").text == "1")
        assert not keyrow.is_displayed() and driver.find_element("id", "error").text == ""
    finally:
        driver.quit()
        stop_server(process)


@pytest.fixture(scope="module")
def mixed_page(tmp_path_factory):
    """A server with an image task and a multi-label task, and a browser."""
    root = tmp_path_factory.mktemp("page-kinds")
    torch.manual_seed(0)
    model = adaptformer.create_model("adaptformer/vit-tiny-cifar10", "linear", num_classes=3)
    adaptformer.save_task(model, root / "tasks" / "colour.safetensors", classes=["red", "green", "blue"])
    tags = adaptformer.create_model("adaptformer/vit-tiny-cifar10", "linear", classes=["sky", "sea", "sand"],
                                    objective="multilabel")  # fmt: skip
    adaptformer.save_task(tags, root / "tasks" / "tags.safetensors")
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "a.png")
    from formats import write_video

    write_video(root / "clip.webm", np.random.default_rng(2).integers(0, 255, (12, 32, 32, 3), dtype=np.uint8))
    process, url = start_server(["--task-dir", str(root / "tasks"), "--precision", "fp32"])
    driver = chromium()
    yield driver, url, root
    driver.quit()
    stop_server(process)


def test_a_dropped_image_is_previewed_at_a_readable_size_and_answered_with_bars(mixed_page):
    driver, url, root = mixed_page
    driver.set_window_size(1280, 900)
    driver.get(f"{url}/")
    wait_for(lambda: driver.find_element("id", "count").text == "2")
    data = base64.b64encode((root / "a.png").read_bytes()).decode()
    driver.execute_script(
        """const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "a.png", { type: "image/png" }));
        const drop = new DragEvent("drop", { dataTransfer: transfer, bubbles: true });
        document.getElementById("drop").dispatchEvent(drop);""",
        data,
    )  # a file dropped on the drop zone, as a user's drag ends
    assert wait_for(lambda: len(rows(driver)) == 2)
    preview = driver.find_element("id", "preview")
    assert "small" in preview.get_attribute("class") and preview.size["width"] >= 200  # 32 px, shown scaled up
    colour, tags = rows(driver)
    assert colour.text.startswith("colour") and len(colour.find_elements("css selector", ".bar i")) == 3
    widths = [
        float(bar.value_of_css_property("width").rstrip("px")) for bar in colour.find_elements("css selector", ".bar i")
    ]
    assert widths == sorted(widths, reverse=True) and widths[0] > 0  # the most probable label has the longest bar
    assert "multi-label, threshold 0.5" in tags.text
    assert tags.find_elements("css selector", ".label") or "none above 0.5" in tags.text
    assert driver.find_element("id", "filename").text == "a.png"


def test_a_clip_shows_a_strip_of_its_frames(mixed_page):
    driver, url, root = mixed_page
    driver.get(f"{url}/")
    wait_for(lambda: driver.find_element("id", "count").text == "2")
    driver.find_element("id", "file").send_keys(str(root / "clip.webm"))
    wait_for(lambda: len(driver.find_elements("css selector", "#frames canvas")) == 4)
    assert driver.find_element("id", "error").text == "no video task on this page"  # the tasks take images


def test_the_page_fits_a_phone_sized_window(mixed_page):
    driver, url, root = mixed_page
    driver.set_window_size(375, 740)
    try:
        driver.get(f"{url}/")
        wait_for(lambda: driver.find_element("id", "count").text == "2")
        driver.find_element("id", "file").send_keys(str(root / "a.png"))
        wait_for(lambda: len(rows(driver)) == 2)
        overflow = driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0  # nothing wider than the screen
        drop, results = driver.find_element("id", "drop"), driver.find_element("id", "results")
        assert results.location["y"] > drop.location["y"]  # one column: the answers below the input
    finally:
        driver.set_window_size(1280, 900)
