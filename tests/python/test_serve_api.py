"""`clipdb serve`'s JSON API against the CLI on the same library (the CLI's --json output is the
independent answer), its refusals of bad input (each a 4xx with a JSON error and the library's
file unchanged), its token on non-loopback addresses, and a bounded load test with a concurrent
`clipdb index`."""
import hashlib
import json
import statistics
import struct
import subprocess
import threading
import time
import urllib.parse
import zlib

import pytest

from serve_helpers import Server, get_json, index_demo, request, serve_env


@pytest.fixture(scope="module")
def lib(clipdb_bin, model_dir, demo_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    env = serve_env(tmp)
    db, photos = index_demo(clipdb_bin, model_dir, demo_dir, tmp, env, sub=3)
    return {"db": db, "photos": photos, "env": env, "tmp": tmp}


@pytest.fixture(scope="module")
def server(clipdb_bin, lib):
    s = Server(clipdb_bin, lib["db"], lib["env"], "--listen", "127.0.0.1:0")
    yield s
    assert s.stop() == 0, s.stderr


def cli_json(clipdb_bin, lib, *args):
    out = subprocess.run([clipdb_bin, "--db", str(lib["db"]), *args, "--json"], env=lib["env"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def q(s):
    return urllib.parse.quote(s, safe="")


def test_status_counts_the_library(server, lib):
    status, body = get_json(server.base + "/api/status")
    assert status == 200
    assert body["photos"] == 69
    assert body["model"] == "clip-tiny-shapes"  # the folder's name, not the server's path
    assert body["index"]["count"] == 69
    assert "/" not in json.dumps(body["index"]).replace("IVF1,Flat", "")


@pytest.mark.parametrize("query", ["a red star", "2:a red star - a blue circle"])
def test_search_matches_the_cli(server, lib, clipdb_bin, query):
    status, body = get_json(server.base + f"/api/search?k=10&q={q(query)}")
    want = cli_json(clipdb_bin, lib, "search", "-n", "10", query)
    assert status == 200
    assert [h["path"] for h in body["results"]] == [h["path"] for h in want]
    assert [h["score"] for h in body["results"]] == pytest.approx([h["score"] for h in want],
                                                                   abs=1e-5)


def test_search_date_filter_matches_the_cli(server, lib, clipdb_bin):
    status, body = get_json(server.base + "/api/search?k=69&q=star&after=2100-01-01")
    assert status == 200 and body["results"] == []
    status, body = get_json(server.base + "/api/search?k=69&q=star&before=2100-01-01")
    want = cli_json(clipdb_bin, lib, "search", "-n", "69", "--before", "2100-01-01", "star")
    assert [h["path"] for h in body["results"]] == [h["path"] for h in want]


def test_folder_filter_applies_before_the_top_k_cut(server, lib, clipdb_bin):
    every = [h["path"] for h in cli_json(clipdb_bin, lib, "search", "-n", "69", "a red star")]
    sub = str(lib["photos"] / "sub")
    want = [p for p in every if p.startswith(sub + "/")]
    assert len(want) == 3 and every.index(want[0]) > 0  # the folder's best is not the overall best
    for folder in (sub, sub + "/"):
        url = server.base + f"/api/search?k=2&q=a%20red%20star&folder={q(folder)}"
        status, body = get_json(url)
        assert status == 200
        assert [h["path"] for h in body["results"]] == want[:2]
    status, body = get_json(server.base + f"/api/search?k=3&q=star&folder={q(sub[:-1])}")
    assert status == 200 and body["results"] == []  # a name's prefix is not a folder


def test_similar_matches_the_cli(server, lib, clipdb_bin):
    photo = lib["photos"] / "055-red-star-on-blue.png"
    want = cli_json(clipdb_bin, lib, "similar", "-n", "5", str(photo))
    hits = get_json(server.base + "/api/search?k=66&q=star")[1]["results"]
    rowid = next(h["id"] for h in hits if h["path"] == str(photo))
    status, body = get_json(server.base + f"/api/similar?k=5&id={rowid}")
    assert status == 200
    assert [h["path"] for h in body["results"]] == [h["path"] for h in want]


def test_photo_metadata_is_the_file(server, lib):
    hits = get_json(server.base + "/api/search?k=1&q=a%20red%20star")[1]["results"]
    status, body = get_json(server.base + f"/api/photo?id={hits[0]['id']}")
    assert status == 200
    f = lib["photos"] / body["path"].split("/")[-1]
    assert body["path"] == str(f)
    assert body["size"] == f.stat().st_size
    assert body["hash"] == digest(f)


def test_thumbnail_is_a_small_jpeg_cached_by_hash(server, lib):
    hit = get_json(server.base + "/api/search?k=1&q=a%20red%20star")[1]["results"][0]
    photo = get_json(server.base + f"/api/photo?id={hit['id']}")[1]
    status, headers, body = request(server.base + f"/api/thumb?id={hit['id']}")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert body[:2] == b"\xff\xd8"
    assert "max-age" in headers["Cache-Control"]
    cached = lib["tmp"] / "cache" / "clipdb" / "thumbs" / f"{photo['hash']}-320.jpg"
    assert cached.read_bytes() == body
    status, _, _ = request(server.base + f"/api/thumb?id={hit['id']}",
                           headers={"If-None-Match": headers["ETag"]})
    assert status == 304


def test_image_is_the_file(server, lib):
    hit = get_json(server.base + "/api/search?k=1&q=a%20red%20star")[1]["results"][0]
    status, headers, body = request(server.base + f"/api/image?id={hit['id']}")
    assert status == 200
    assert body == (lib["photos"] / hit["path"].split("/")[-1]).read_bytes()


def test_search_by_uploaded_image_finds_itself_first(server, lib):
    photo = lib["photos"] / "003-black-cross-on-white.webp"
    status, body = get_json(server.base + "/api/search_image?k=3", data=photo.read_bytes(),
                            method="POST")
    assert status == 200
    assert body["results"][0]["path"] == str(photo)
    assert body["results"][0]["score"] > 0.999


def test_dedup_matches_the_cli(server, lib, clipdb_bin):
    status, body = get_json(server.base + "/api/dedup")
    assert status == 200
    ids = [g.pop("ids") for g in body["groups"]]
    assert body["groups"] == cli_json(clipdb_bin, lib, "dedup")
    for group, group_ids in zip(body["groups"], ids):
        assert [get_json(server.base + f"/api/photo?id={i}")[1]["path"] for i in group_ids] == \
            group["paths"]


def test_classify_matches_the_cli(server, lib, clipdb_bin):
    photo = lib["photos"] / "000-orange-circle-on-purple.jpg"
    hits = get_json(server.base + "/api/search?k=66&q=circle")[1]["results"]
    rowid = next(h["id"] for h in hits if h["path"] == str(photo))
    status, body = get_json(server.base + f"/api/classify?id={rowid}&labels=circle,star,square")
    want = cli_json(clipdb_bin, lib, "classify", str(photo), "circle", "star", "square")
    assert status == 200
    assert [x["label"] for x in body["labels"]] == [x["label"] for x in want]
    assert [x["probability"] for x in body["labels"]] == pytest.approx(
        [x["probability"] for x in want], abs=1e-6)


def test_page_and_its_files_are_served(server):
    pages = [("/", "text/html"), ("/app.js", "text/javascript"), ("/style.css", "text/css")]
    for path, kind in pages:
        status, headers, body = request(server.base + path)
        assert status == 200 and headers["Content-Type"].startswith(kind) and body


def png_bomb(side):
    """A valid PNG header claiming side x side pixels (a decompression bomb's shape)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xffffffff)
    raw = zlib.compress(b"\0" * (side // 8 + 1) * 64)
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


BAD_REQUESTS = [
    ("GET", "/api/search?q=star&k=0", None),
    ("GET", "/api/search?q=star&k=-1", None),
    ("GET", "/api/search?q=star&k=99999999999999999999", None),
    ("GET", "/api/search?q=star&k=1001", None),
    ("GET", "/api/search?q=star&k=ten", None),
    ("GET", "/api/search?q=", None),
    ("GET", "/api/search", None),
    ("GET", "/api/search?q=" + "a" * 5000, None),
    ("GET", "/api/search?q=%ff%fe", None),
    ("GET", "/api/search?q=%22unclosed", None),
    ("GET", "/api/search?q=star&after=yesterday", None),
    ("GET", "/api/search?q=star&folder=photos", None),
    ("GET", "/api/similar?id=999999", None),
    ("GET", "/api/similar?id=abc", None),
    ("GET", "/api/photo?id=../../../../etc/passwd", None),
    ("GET", "/api/photo?path=/etc/passwd", None),
    ("GET", "/api/image?id=0", None),
    ("GET", "/api/thumb?id=-3", None),
    ("GET", "/../../../../etc/passwd", None),
    ("GET", "/api/../../etc/passwd", None),
    ("GET", "/api/classify?id=1&labels=one", None),
    ("GET", "/api/dedup?threshold=2", None),
    ("GET", "/api/nothing", None),
    ("POST", "/api/search", b"x"),
    ("POST", "/api/search_image", b""),
    ("POST", "/api/search_image", b"this is not an image"),
    ("POST", "/api/search_image", png_bomb(60000)),
    ("POST", "/api/search_image", b"\0" * (21 << 20)),
]


@pytest.mark.parametrize("method,path,body", BAD_REQUESTS,
                         ids=[f"{m} {p[:50]} {len(b or b'')}" for m, p, b in BAD_REQUESTS])
def test_bad_requests_get_a_clear_4xx_and_change_nothing(server, lib, method, path, body):
    before = digest(lib["db"])
    status, headers, answer = request(server.base + path, data=body, method=method)
    assert 400 <= status < 500, (status, answer[:200])
    assert headers["Content-Type"] == "application/json"
    message = json.loads(answer)["error"]
    assert message and str(lib["tmp"]) not in message and "/etc" not in message
    assert digest(lib["db"]) == before
    assert get_json(server.base + "/api/status")[0] == 200  # still serving


def test_a_1mb_query_is_refused_with_a_4xx(server):
    status, _, _ = request(server.base + "/api/search?q=" + "a" * (1 << 20))
    assert 400 <= status < 500


def test_non_loopback_requires_the_token(clipdb_bin, lib):
    s = Server(clipdb_bin, lib["db"], lib["env"], "--listen", "0.0.0.0:0")
    try:
        assert s.token and len(s.token) == 32
        base = s.base.replace("0.0.0.0", "127.0.0.1")
        assert request(base + "/api/status")[0] == 401
        assert request(base + "/api/status?token=wrong" + "0" * 27)[0] == 401
        assert request(base + "/")[0] == 401
        photo = (lib["photos"] / "003-black-cross-on-white.webp").read_bytes()
        assert request(base + "/api/search_image", data=photo, method="POST")[0] == 401
        bearer = {"Authorization": "Bearer " + s.token}
        assert request(base + "/api/status", headers=bearer)[0] == 200
        assert request(base + "/api/status?token=" + s.token)[0] == 200
    finally:
        assert s.stop() == 0


def test_a_given_token_is_required_on_loopback_too(clipdb_bin, lib):
    s = Server(clipdb_bin, lib["db"], lib["env"], "--listen", "127.0.0.1:0", "--token", "s3cret")
    try:
        assert request(s.base + "/api/status")[0] == 401
        assert request(s.base + "/api/status", headers={"Authorization": "Bearer s3cret"})[0] == 200
    finally:
        assert s.stop() == 0


def test_bad_options_are_usage_errors(clipdb_bin, lib):
    for args in (["--listen", "localhost"], ["--listen", "1.2.3.4:99999"], ["--threads", "0"],
                 ["--token", ""]):
        r = subprocess.run([clipdb_bin, "--db", str(lib["db"]), "serve", *args], env=lib["env"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 2, (args, r.stderr)


def test_missing_library_is_an_error_before_listening(clipdb_bin, tmp_path):
    r = subprocess.run([clipdb_bin, "--db", str(tmp_path / "none.db"), "serve", "--listen",
                        "127.0.0.1:0"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "clipdb index" in r.stderr


def test_load_8_clients_while_index_writes(clipdb_bin, model_dir, lib, tmp_path):
    """8 clients x 200 searches while `clipdb index` adds photos: every answer a 200 whose
    results are sorted and within the library."""
    s = Server(clipdb_bin, lib["db"], lib["env"], "--listen", "127.0.0.1:0", "--threads", "8")
    extra = lib["photos"] / "more"
    extra.mkdir()
    added = sorted(lib["photos"].glob("0[0-2]*"))
    for p in added:
        (extra / p.name).write_bytes(p.read_bytes())
    writer = subprocess.Popen([clipdb_bin, "--db", str(lib["db"]), "--model", model_dir, "index",
                               str(lib["photos"])], env=lib["env"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    times, failures = [], []
    queries = ["a red star", "a blue circle", "2:square - white", "a green triangle"]

    def client(n):
        for i in range(200):
            t = time.perf_counter()
            status, body = get_json(s.base + f"/api/search?k=10&q={q(queries[(n + i) % 4])}")
            times.append(time.perf_counter() - t)
            scores = [h["score"] for h in body.get("results", [])]
            if status != 200 or len(scores) != 10 or scores != sorted(scores, reverse=True):
                failures.append((status, body))

    try:
        threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert writer.wait(timeout=300) == 0, writer.stderr.read()
        # the new photos are seen without a restart
        assert get_json(s.base + "/api/status")[1]["photos"] == 69 + len(added)
    finally:
        writer.stderr.close()
        assert s.stop() == 0, s.stderr
    assert failures == []
    assert len(times) == 1600
    times.sort()
    print(f"serve load: 1600 searches, p50 {statistics.median(times) * 1e3:.1f} ms, "
          f"p99 {times[int(len(times) * 0.99)] * 1e3:.1f} ms")


def test_sigint_stops_the_server_cleanly(clipdb_bin, lib):
    import signal
    s = Server(clipdb_bin, lib["db"], lib["env"], "--listen", "127.0.0.1:0")
    s.proc.send_signal(signal.SIGINT)
    assert s.proc.wait(timeout=30) == 0
    assert s.stop() == 0 and "stopped" in s.stderr
    assert request_fails(s.base + "/api/status")


def request_fails(url):
    try:
        request(url)
    except OSError:
        return True
    return False


# ---- videos: a result per video with its moment, the frame as thumbnail, Range requests ----

@pytest.fixture(scope="module")
def video_lib(clipdb_bin, model_dir, tmp_path_factory):
    from video_helpers import needs_ffmpeg, shapes_folder, shapes_video
    if needs_ffmpeg.args[0]:
        pytest.skip("ffmpeg not installed")
    tmp = tmp_path_factory.mktemp("serve-video")
    env = serve_env(tmp)
    photos = shapes_folder(tmp / "photos", 6)
    video = shapes_video(photos / "shapes.mp4")
    db = tmp / "lib.db"
    subprocess.run([clipdb_bin, "--db", str(db), "--model", model_dir, "index", str(photos)],
                   check=True, env=env, capture_output=True)
    s = Server(clipdb_bin, db, env, "--listen", "127.0.0.1:0")
    yield {"server": s, "video": video, "db": db, "env": env, "tmp": tmp}
    assert s.stop() == 0, s.stderr


def video_hit(v, query="a red star"):
    status, body = get_json(v["server"].base + f"/api/search?k=3&q={q(query)}")
    assert status == 200
    hits = [h for h in body["results"] if h["t"] is not None]
    assert len(hits) == 1 and hits[0]["path"] == v["video"]  # once, at its best moment
    return hits[0]


def test_video_result_has_its_moment_like_the_cli(video_lib, clipdb_bin):
    hit = video_hit(video_lib)
    assert 3 <= hit["t"] <= 5
    cli = json.loads(subprocess.run(
        [clipdb_bin, "--db", str(video_lib["db"]), "search", "--json", "-n", "3", "a red star"],
        env=video_lib["env"], check=True, capture_output=True, text=True).stdout)
    assert [(h["path"], h["t"]) for h in cli] == [
        (h["path"], h["t"]) for h in get_json(video_lib["server"].base +
                                              "/api/search?k=3&q=a%20red%20star")[1]["results"]]
    status, meta = get_json(video_lib["server"].base + f"/api/photo?id={hit['id']}")
    assert status == 200 and meta["t"] == hit["t"] and meta["path"] == video_lib["video"]


def decode_jpeg(body):
    """(width, height, rgb bytes) of a JPEG, decoded by the ffmpeg CLI (not in this process)."""
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=width,height",
                            "-of", "csv=p=0", "-"], input=body, capture_output=True, check=True)
    w, h = map(int, probe.stdout.decode().strip().split(","))
    rgb = subprocess.run(["ffmpeg", "-v", "error", "-i", "-", "-f", "rawvideo", "-pix_fmt",
                          "rgb24", "-"], input=body, capture_output=True, check=True).stdout
    return w, h, rgb


def test_video_thumbnail_is_the_frame_at_t(video_lib):
    base = video_lib["server"].base
    star = video_hit(video_lib)
    square = video_hit(video_lib, "a blue square")
    corner = {}
    for name, hit in (("star", star), ("square", square)):
        status, headers, body = request(base + f"/api/thumb?id={hit['id']}")
        assert status == 200 and headers["Content-Type"] == "image/jpeg"
        w, h, rgb = decode_jpeg(body)
        assert (w, h) == (320, 240)  # a short side of 240
        corner[name] = tuple(rgb[(5 * w + 5) * 3:(5 * w + 5) * 3 + 3])
    # the frames' backgrounds as drawn: the star on blue, the square on white
    sr, sg, sb = corner["star"]
    assert sb > 150 and sr < 100, corner
    assert min(corner["square"]) > 200, corner


def test_video_is_served_with_range_requests(video_lib):
    base = video_lib["server"].base
    hit = video_hit(video_lib)
    data = open(video_lib["video"], "rb").read()
    size = len(data)
    url = base + f"/api/video?id={hit['id']}"
    status, headers, body = request(url)
    assert status == 200 and body == data and headers["Accept-Ranges"] == "bytes"
    assert headers["Content-Type"] == "video/mp4"
    for rng, lo, hi in [("bytes=0-99", 0, 99), ("bytes=100-", 100, size - 1),
                        ("bytes=-50", size - 50, size - 1), (f"bytes=10-{size + 5}", 10, size - 1)]:
        status, headers, body = request(url, headers={"Range": rng})
        assert status == 206, rng
        assert headers["Content-Range"] == f"bytes {lo}-{hi}/{size}", rng
        assert body == data[lo:hi + 1], rng
    for rng in [f"bytes={size}-", f"bytes={size + 10}-{size + 20}", "bytes=-0"]:
        status, headers, _ = request(url, headers={"Range": rng})
        assert status == 416 and headers["Content-Range"] == f"bytes */{size}", rng
    for rng in ["bytes=5-2", "items=0-1", "bytes=0-1,5-6", "bytes=x-"]:  # ignored: the whole file
        status, _, body = request(url, headers={"Range": rng})
        assert status == 200 and body == data, rng


def test_video_endpoint_serves_only_videos_of_the_library(video_lib):
    base = video_lib["server"].base
    photo = next(h for h in get_json(base + "/api/search?k=5&q=a%20circle")[1]["results"]
                 if h["t"] is None)
    assert request(base + f"/api/video?id={photo['id']}")[0] == 404
    assert request(base + "/api/video?id=999999")[0] == 404
    assert request(base + "/api/video?id=../../etc/passwd")[0] == 400
    assert request(base + "/api/video?path=" + q(video_lib["video"]))[0] == 400


def test_similar_from_a_video_frame_leaves_the_video_out(video_lib):
    base = video_lib["server"].base
    hit = video_hit(video_lib)
    status, body = get_json(base + f"/api/similar?k=5&id={hit['id']}")
    assert status == 200 and body["results"]
    assert all(h["path"] != video_lib["video"] for h in body["results"])
