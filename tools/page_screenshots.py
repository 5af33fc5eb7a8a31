"""Screenshots of the server's page (``docs/images/page-desktop.png``, ``page-phone.png``) in headless Chromium.

A server on the embedded backbone with two tasks: ``cifar10`` (the backbone's own CIFAR-10 classifier as a task
head) and ``outdoors`` (a multi-label task), and a real CIFAR-10 test image from the packaged sample. Needs
Debian's chromium and chromium-driver (as the page tests do)::

    python tools/page_screenshots.py
"""

from __future__ import annotations

import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "serve"))

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_tasks(folder: Path) -> None:
    import adaptformer

    classifier = adaptformer.create_backbone("adaptformer/vit-tiny-cifar10").head
    model = adaptformer.create_model("adaptformer/vit-tiny-cifar10", "linear", classes=CIFAR10, head_batchnorm=False)
    with torch.no_grad():  # the backbone's own CIFAR-10 classifier, as a task
        model.task.head.weight.copy_(classifier.weight)
        model.task.head.bias.copy_(classifier.bias)
    adaptformer.save_task(model, folder / "cifar10.safetensors")
    torch.manual_seed(0)
    tags = adaptformer.create_model(
        "adaptformer/vit-tiny-cifar10", "linear", classes=["sky", "water", "grass", "road"], objective="multilabel"
    )
    adaptformer.save_task(tags, folder / "outdoors.safetensors")


def sample_image(path: Path) -> None:
    """A CIFAR-10 test image (a ship) from the sample the package ships."""
    from adaptformer.data.image import CIFAR10_SAMPLE

    with np.load(CIFAR10_SAMPLE, allow_pickle=False) as sample:
        jpeg, offsets, labels, in_train = sample["jpeg"], sample["offsets"], sample["labels"], sample["train"]
    index = next(i for i in range(len(labels)) if not in_train[i] and CIFAR10[labels[i]] == "ship")
    Image.open(io.BytesIO(jpeg[offsets[index] : offsets[index + 1]].tobytes())).convert("RGB").save(path)


def main() -> int:
    from launch import start_server, stop_server
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    out = ROOT / "docs" / "images"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        make_tasks(folder / "tasks")
        sample_image(folder / "ship.png")
        process, url = start_server(["--task-dir", str(folder / "tasks"), "--precision", "fp32"])
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium")
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
        try:
            for name, (width, height) in (("desktop", (1100, 560)), ("phone", (390, 844))):
                driver.set_window_size(width, height)
                driver.get(f"{url}/")
                time.sleep(1)
                driver.find_element("id", "file").send_keys(str(folder / "ship.png"))
                deadline = time.time() + 60
                while len(driver.find_elements("css selector", "#results tbody tr")) < 2 and time.time() < deadline:
                    time.sleep(0.2)
                time.sleep(0.5)
                png = driver.get_screenshot_as_png()
                Image.open(io.BytesIO(png)).convert("RGB").save(out / f"page-{name}.png", optimize=True)
                print(f"{out / f'page-{name}.png'}")
        finally:
            driver.quit()
            stop_server(process)
    return 0


if __name__ == "__main__":
    np.random.seed(0)
    sys.exit(main())
