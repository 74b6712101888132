"""The gallery page in headless Chromium (Debian's chromium + chromium-driver, driven by
selenium) against `clipdb serve` on the demo library. The expected answers come from the CLI on
the same library. Screenshots of each state go to test-artifacts/serve/ (or
$CLIPDB_TEST_ARTIFACTS/serve). Chromium failing to start fails the test with its reason."""
import json
import os
import pathlib
import subprocess

import pytest

from serve_helpers import Server, index_demo, serve_env

ROOT = pathlib.Path(__file__).resolve().parents[2]
ARTIFACTS = pathlib.Path(os.environ.get("CLIPDB_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "serve"


@pytest.fixture(scope="module")
def gallery(clipdb_bin, model_dir, demo_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gallery")
    env = serve_env(tmp)
    db, photos = index_demo(clipdb_bin, model_dir, demo_dir, tmp, env)
    s = Server(clipdb_bin, db, env, "--listen", "127.0.0.1:0")
    yield {"server": s, "db": db, "photos": photos, "env": env}
    assert s.stop() == 0, s.stderr


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1200,900"):
        opts.add_argument(a)
    opts.binary_location = "/usr/bin/chromium"
    try:
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    except Exception as e:  # the reason, not a skip: CI must run these tests
        pytest.fail(f"Chromium could not start: {e}")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def wait(driver, cond, timeout=30):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: cond(d))


def cells(driver, where="#grid"):
    from selenium.webdriver.common.by import By
    return driver.find_elements(By.CSS_SELECTOR, where + " .cell")


def names(driver, where="#grid"):
    return [c.get_attribute("title").split("\n")[0].split("/")[-1] for c in cells(driver, where)]


def cli(gallery, clipdb_bin, *args):
    out = subprocess.run([clipdb_bin, "--db", str(gallery["db"]), *args, "--json"],
                         env=gallery["env"], check=True, capture_output=True, text=True).stdout
    return [h["path"].split("/")[-1] for h in json.loads(out)]


def type_query(driver, text):
    from selenium.webdriver.common.by import By
    box = driver.find_element(By.ID, "q")
    box.clear()
    box.send_keys(text)


def shot(driver, name):
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 1000


def open_page(browser, gallery):
    browser.get(gallery["server"].base + "/")
    wait(browser, lambda d: "photos" in d.find_element("id", "status").text)


def test_typing_a_red_star_shows_both_red_stars_first(browser, gallery, clipdb_bin):
    open_page(browser, gallery)
    shot(browser, "0-empty")
    type_query(browser, "a red star")
    want = cli(gallery, clipdb_bin, "search", "-n", "24", "a red star")
    wait(browser, lambda d: names(d) == want)
    stars = {"055-red-star-on-blue.png", "057-red-star-on-purple.webp"}
    assert set(names(browser)[:2]) == stars
    wait(browser, lambda d: all(i.get_property("naturalWidth") > 0
                                for i in d.find_elements("css selector", "#grid img")[:8]))
    shot(browser, "1-search-red-star")


def open_first_and_read_similar(browser, gallery, clipdb_bin, query):
    """Searches, clicks the first result; its name and the similar photos' names (checked
    against `clipdb similar` of that file)."""
    open_page(browser, gallery)
    type_query(browser, query)
    wait(browser, lambda d: len(cells(d)) > 0)
    first = names(browser)[0]
    cells(browser)[0].click()
    wait(browser, lambda d: d.find_element("id", "viewer").is_displayed())
    wait(browser, lambda d: first in d.find_element("id", "meta").text)
    want = cli(gallery, clipdb_bin, "similar", "-n", "12", str(gallery["photos"] / first))
    wait(browser, lambda d: names(d, "#similar") == want)
    wait(browser, lambda d: d.find_element("id", "large").get_property("naturalWidth") > 0)
    return first, want


def test_clicking_a_red_star_shows_the_other_as_most_similar(browser, gallery, clipdb_bin):
    first, similar = open_first_and_read_similar(browser, gallery, clipdb_bin, "a red star")
    stars = {"055-red-star-on-blue.png", "057-red-star-on-purple.webp"}
    assert first in stars and similar[0] == (stars - {first}).pop()
    shot(browser, "2-viewer-red-star")


def test_clicking_a_photo_shows_its_planted_copy_first_among_similar(browser, gallery, clipdb_bin):
    first, similar = open_first_and_read_similar(browser, gallery, clipdb_bin,
                                                 "an orange circle on purple")
    assert first.startswith("000-orange-circle-on-purple")
    assert similar[0].startswith("000-orange-circle-on-purple") and similar[0] != first
    shot(browser, "2-viewer-planted-copy")


def test_keyboard_arrows_escape_and_slash(browser, gallery):
    from selenium.webdriver.common.keys import Keys
    open_page(browser, gallery)
    type_query(browser, "a red star")
    wait(browser, lambda d: len(cells(d)) >= 3)
    order = names(browser)
    cells(browser)[0].click()
    wait(browser, lambda d: order[0] in d.find_element("id", "meta").text)
    body = browser.find_element("tag name", "body")
    body.send_keys(Keys.ARROW_RIGHT)
    wait(browser, lambda d: order[1] in d.find_element("id", "meta").text)
    shot(browser, "3-keyboard-right")
    body.send_keys(Keys.ARROW_LEFT)
    wait(browser, lambda d: order[0] in d.find_element("id", "meta").text)
    body.send_keys(Keys.ESCAPE)
    wait(browser, lambda d: not d.find_element("id", "viewer").is_displayed())
    body.send_keys("/")
    wait(browser, lambda d: d.switch_to.active_element.get_attribute("id") == "q")


def test_uploading_a_fixture_image_finds_itself_first(browser, gallery):
    open_page(browser, gallery)
    photo = gallery["photos"] / "003-black-cross-on-white.webp"
    browser.find_element("id", "file").send_keys(str(photo))
    wait(browser, lambda d: names(d)[:1] == [photo.name])
    assert "1.000" in cells(browser)[0].text
    shot(browser, "4-upload")


def test_date_filter_removes_what_it_should(browser, gallery, clipdb_bin):
    open_page(browser, gallery)
    type_query(browser, "a red star")
    wait(browser, lambda d: len(cells(d)) == 24)
    browser.execute_script(
        "const e = document.getElementById('after'); e.value = '2100-01-01';"
        "e.dispatchEvent(new Event('change'));")
    wait(browser, lambda d: "No photos match" in d.find_element("id", "message").text)
    assert cells(browser) == []
    assert cli(gallery, clipdb_bin, "search", "--after", "2100-01-01", "a red star") == []
    shot(browser, "5-date-filter")


def test_phone_width_shows_the_grid(browser, gallery):
    browser.set_window_size(390, 844)
    try:
        open_page(browser, gallery)
        type_query(browser, "a red star")
        wait(browser, lambda d: len(cells(d)) == 24)
        widths = {c.size["width"] for c in cells(browser)[:3]}
        assert max(widths) < 390 / 2
        shot(browser, "6-phone")
    finally:
        browser.set_window_size(1200, 900)


def test_duplicates_view_shows_the_planted_copies(browser, gallery, clipdb_bin):
    open_page(browser, gallery)
    browser.find_element("id", "dedup").click()
    out = subprocess.run([clipdb_bin, "--db", str(gallery["db"]), "dedup", "--json"],
                         env=gallery["env"], check=True, capture_output=True, text=True).stdout
    want = [p.split("/")[-1] for g in json.loads(out) for p in g["paths"]]
    assert len(want) >= 6
    wait(browser, lambda d: names(d) == want)
    shot(browser, "7-duplicates")


def test_classify_box_ranks_the_shape(browser, gallery):
    open_page(browser, gallery)
    type_query(browser, "a red star")
    wait(browser, lambda d: len(cells(d)) > 0)
    cells(browser)[0].click()
    wait(browser, lambda d: d.find_element("id", "viewer").is_displayed())
    browser.find_element("id", "labels").send_keys("circle, star, square\n")
    wait(browser, lambda d: len(d.find_elements("css selector", "#classes li")) == 3)
    assert browser.find_elements("css selector", "#classes li")[0].text.endswith("star")
    shot(browser, "8-classify")


# ---- a video: the frame as its thumbnail, the viewer plays it from its moment ----

@pytest.fixture(scope="module", params=["h264.mp4", "vp9.webm"])
def video_gallery(request, clipdb_bin, model_dir, tmp_path_factory):
    """A library of a few photos and the shapes video, as H.264 in MP4 and as VP9 in WebM (the
    two a browser is most likely to get from a phone or the web)."""
    from video_helpers import needs_ffmpeg, shapes_folder, shapes_video
    if needs_ffmpeg.args[0]:
        pytest.skip("ffmpeg not installed")
    tmp = tmp_path_factory.mktemp("gallery-video")
    env = serve_env(tmp)
    photos = shapes_folder(tmp / "photos", 4)
    codec = ("-c:v", "libvpx-vp9", "-b:v", "200k") if request.param.endswith("webm") else \
        ("-c:v", "libx264")
    video = shapes_video(photos / ("shapes-" + request.param), codec=codec)
    db = tmp / "lib.db"
    subprocess.run([clipdb_bin, "--db", str(db), "--model", model_dir, "index", str(photos)],
                   check=True, env=env, capture_output=True)
    s = Server(clipdb_bin, db, env, "--listen", "127.0.0.1:0")
    yield {"server": s, "db": db, "photos": photos, "env": env, "video": video}
    assert s.stop() == 0, s.stderr


def test_video_plays_from_its_moment(browser, video_gallery, clipdb_bin):
    open_page(browser, video_gallery)
    type_query(browser, "a blue square")
    name = pathlib.Path(video_gallery["video"]).name
    wait(browser, lambda d: names(d)[:1] == [name])
    hit = json.loads(subprocess.run(
        [clipdb_bin, "--db", str(video_gallery["db"]), "search", "--json", "-n", "1",
         "a blue square"], env=video_gallery["env"], check=True, capture_output=True,
        text=True).stdout)[0]
    assert 7 <= hit["t"] <= 9
    cell = cells(browser)[0]
    assert "▶ 0:0" in cell.text  # the moment on the thumbnail
    wait(browser, lambda d: d.find_element("css selector", "#grid img")
         .get_property("naturalWidth") > 0)  # the frame at t as the thumbnail
    cell.click()
    wait(browser, lambda d: d.find_element("id", "clip").is_displayed())
    assert not browser.find_element("id", "large").is_displayed()
    # the browser decoded the video (readyState >= HAVE_CURRENT_DATA) and stands at t
    wait(browser, lambda d: d.execute_script("return document.getElementById('clip').readyState")
         >= 2)
    wait(browser, lambda d: abs(d.execute_script(
        "return document.getElementById('clip').currentTime") - hit["t"]) < 1.0)
    # and got there by seeking, not by playing from the start
    played = browser.execute_script("const p = document.getElementById('clip').played;"
                                    "return p.length ? p.start(0) : null")
    assert played is None or played >= hit["t"] - 1.0, played
    error = browser.execute_script("const e = document.getElementById('clip').error;"
                                   "return e && e.code")
    assert error is None
    shot(browser, "8-video-" + name.replace(".", "-"))
    browser.find_element("tag name", "body").send_keys("\ue00c")  # Escape pauses the video
    wait(browser, lambda d: d.execute_script("return document.getElementById('clip').paused"))
