"""The search page and its images (runtime/web.py) on a real server: images come only from under
--media-root, whatever the path says; the page is open, its images need a read key; and in a real
headless Chromium, a text query shows the API's top hit, and clicking a hit searches by its image."""

from __future__ import annotations

import http.client
import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from runtime.cli import main as client_main
from tests.runtime.conftest import Server
from train.data.shapes import render, scene

NOT_FOUND = "no such image under the media root"


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of 12 rendered scenes (two in a subfolder) and a secret beside it."""
    root = tmp_path_factory.mktemp("web")
    media = root / "photos"
    (media / "more").mkdir(parents=True)
    for i in range(12):
        where = media / "more" if i >= 10 else media
        picture = np.asarray(render(scene(1, "web", i), 96), np.uint8)
        Image.fromarray(picture).save(where / f"scene{i:02d}.png")
    (root / "secret.png").write_bytes(png(np.zeros((4, 4, 3), np.uint8)))
    (media / "notes.txt").write_text("not an image")
    (media / "escape.png").symlink_to(root / "secret.png")
    return media


@pytest.fixture(scope="module")
def web(bundle: Path, photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(bundle, "--media-root", str(photos), data_dir=tmp_path_factory.mktemp("web-data"))
    s.client().close()
    assert client_main(["--target", s.target, "index", str(photos), "--collection", "photos"]) == 0
    yield s
    assert s.stop() == 0, "".join(s.lines)


def test_media_are_served_from_under_the_root_only(web: Server, photos: Path) -> None:
    with httpx.Client(base_url=web.http, timeout=30) as http:
        r = http.get("/v1/media/more/scene10.png")
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert r.content == (photos / "more" / "scene10.png").read_bytes()
        outside = "/" + str(photos.parent / "secret.png")
        for path in ("../secret.png", "more/../../secret.png", "%2e%2e/secret.png", "..%2fsecret.png",
                     "escape.png", "notes.txt", "missing.png", outside):  # fmt: skip
            status, reply = raw_get(web.http_port, "/v1/media/" + path)  # sent as is, not normalised
            assert status == 404 and json.loads(reply)["error"]["message"] == NOT_FOUND, path
        page = http.get("/")
        assert page.status_code == 200 and "Tessera search" in page.text
        assert "http://" not in page.text and "https://" not in page.text  # no external assets


def raw_get(port: int, path: str) -> tuple[int, bytes]:
    """GET with the path exactly as given (httpx would resolve its dot segments first)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_without_a_media_root_no_image_is_served(bundle: Path, photos: Path, tmp_path: Path) -> None:
    s = Server(bundle, data_dir=tmp_path)
    try:
        r = httpx.get(f"{s.http}/v1/media/scene00.png", timeout=30)
        assert r.status_code == 404 and "--media-root" in r.json()["error"]["message"]
    finally:
        assert s.stop() == 0


def test_the_page_is_open_and_its_images_need_a_read_key(bundle: Path, photos: Path, tmp_path: Path) -> None:
    from runtime.keys import main as keys_main

    key_file = tmp_path / "keys"
    reader = capture_key(keys_main, ["add", "--file", str(key_file), "--scopes", "read", "--name", "page"])
    s = Server(bundle, "--media-root", str(photos), "--api-keys", str(key_file), data_dir=tmp_path / "d")
    try:
        assert httpx.get(f"{s.http}/", timeout=30).status_code == 200
        assert httpx.get(f"{s.http}/v1/media/scene00.png", timeout=30).status_code == 401
        auth = {"Authorization": f"Bearer {reader}"}
        assert httpx.get(f"{s.http}/v1/media/scene00.png", headers=auth, timeout=30).status_code == 200
    finally:
        assert s.stop() == 0


def capture_key(keys_main: object, argv: list[str]) -> str:
    """The key `python -m runtime keys add` prints (its last line's last word)."""
    import contextlib

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert keys_main(argv) == 0  # type: ignore[operator]
    return out.getvalue().split()[-1]


# -- the browser ------------------------------------------------------------------------------------


def ids(driver: object) -> list[str]:
    """The ids of the hits the page shows, in order, read in one script call (a grid re-rendered
    between finding its cards and reading them would leave stale references)."""
    script = "return [...document.querySelectorAll('#grid .hit')].map((e) => e.dataset.id)"
    return list(driver.execute_script(script))  # type: ignore[attr-defined]


def chromium() -> tuple[str, str]:
    """The Chromium binary and its driver (Debian's `chromium`, `chromium-driver`), or a skip."""
    pytest.importorskip("selenium", reason="selenium (the dev extra) is not installed")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("chromium and chromedriver are not installed (`make test` installs them as root)")
    return browser, driver


def test_a_query_shows_the_top_hit_and_clicking_a_hit_searches_by_its_image(
    web: Server, photos: Path, tmp_path: Path
) -> None:
    browser_path, driver_path = chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    query = "a red circle above a blue square"
    with web.client() as client:
        expected = [hit_id for hit_id, _, _ in client.search("photos", query, top_k=12)]  # the page's top 12
    options = webdriver.ChromeOptions()
    options.binary_location = browser_path
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=420,900"):
        options.add_argument(flag)  # a phone-sized window
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not try to download a driver
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        wait = WebDriverWait(driver, 30)
        driver.get(web.http + "/")
        wait.until(lambda d: d.find_element(By.ID, "collection").get_attribute("value") == "photos")
        box = driver.find_element(By.ID, "query")
        box.send_keys(query)
        driver.find_element(By.ID, "search").click()
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#grid .hit")))
        cards = driver.find_elements(By.CSS_SELECTOR, "#grid .hit")
        assert ids(driver) == expected  # the API's hits, in its order
        assert "scored 13 of 13" in driver.find_element(By.ID, "status").text  # escape.png too
        shown = len([i for i in expected if i != "escape.png"])  # its link leads outside the media root
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#grid img.thumb")) == shown)
        assert "query codes" in driver.find_element(By.ID, "query-codes").text
        clicked = cards[3].get_attribute("data-id")
        with web.client() as client:  # image -> image, as the API answers it for the clicked picture
            by_image = client.search("photos", photos / clicked, top_k=12)
        cards[3].click()
        wait.until(lambda d: d.find_elements(By.ID, "query-image"))
        wait.until(lambda d: ids(d) == [hit_id for hit_id, _, _ in by_image])
        top = driver.find_element(By.CSS_SELECTOR, "#grid .hit .meta b").text
        assert float(top) == pytest.approx(by_image[0][1], abs=1e-3)
        assert driver.save_screenshot(str(tmp_path / "search-page.png"))
    finally:
        driver.quit()
