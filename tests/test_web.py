"""`seqmnist serve`: the real server in its own process on 127.0.0.1, driven by a real headless Chromium
(Debian's, through its ChromeDriver) and by real HTTP clients. Nothing is mocked: the model is a small
run trained by the CLI, and every server started here is stopped, whatever happens to the test."""

from __future__ import annotations

import base64
import http.client
import io
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from test_predict import encode, photographed, png_header

# make test's tier: a real server process, load, and Chromium
pytestmark = pytest.mark.slow

LOAD_CLIENTS = 8
LOAD_SECONDS = float(os.environ.get("SEQMNIST_LOAD_SECONDS", 10))
LOAD_REQUESTS = 2000
SHOTS = os.environ.get("SEQMNIST_SCREENSHOTS")  # a folder to keep the page's screenshot in (the docs' one)


# --- the server -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(quick_run) -> Path:
    """A small rows run made by the CLI (conftest's quick_run); or, for the docs' screenshot, the run
    $SEQMNIST_WEB_RUN names."""
    return Path(os.environ["SEQMNIST_WEB_RUN"]) if os.environ.get("SEQMNIST_WEB_RUN") else quick_run


@pytest.fixture(scope="module")
def server(run_dir) -> Iterator[str]:
    """`seqmnist serve RUN --port 0` in its own process; yields its address, and stops it even when a
    test fails (terminate, then kill)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "seqmnist.cli", "serve", str(run_dir), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = _first_line(process, timeout=60)
        match = re.search(r"http://127\.0\.0\.1:\d+/", line)  # loopback unless told otherwise
        assert match, (line, process.stderr.read() if process.poll() is not None else "")
        url = match[0]
        assert get(url + "api/health") == (200, {"status": "ok", "run": run_dir.name})
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _first_line(process: subprocess.Popen, timeout: float) -> str:
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return lines[0] if lines else ""


def address(url: str) -> tuple[str, int]:
    host, port = re.match(r"http://([^:/]+):(\d+)/", url).groups()
    return host, int(port)


def get(url: str) -> tuple[int, dict]:
    connection = http.client.HTTPConnection(*address(url), timeout=30)
    connection.request("GET", "/" + url.split("/", 3)[3])
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, json.loads(body)


def multipart(data: bytes, filename: str | None = "drawing.png", field: str = "image") -> tuple[bytes, str]:
    """A multipart/form-data body with one file (or, without a filename, one plain field), as a
    browser's FormData sends it."""
    boundary = uuid.uuid4().hex
    disposition = f'form-data; name="{field}"' + (f'; filename="{filename}"' if filename else "")
    kind = "Content-Type: application/octet-stream\r\n" if filename else ""
    head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n{kind}\r\n".encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post(url: str, body: bytes, content_type: str, connection: http.client.HTTPConnection | None = None):
    """POST /api/predict; (status, JSON). A given connection is kept open (the load test reuses it)."""
    own = connection is None
    connection = connection or http.client.HTTPConnection(*address(url), timeout=30)
    connection.request("POST", "/api/predict", body=body, headers={"Content-Type": content_type})
    response = connection.getresponse()
    answer = json.loads(response.read())
    if own:
        connection.close()
    return response.status, answer


def raw_request(url: str, head: bytes, chunks: Iterable[bytes] = ()) -> tuple[int, dict]:
    """Send a request's head, then its body chunk by chunk until the answer comes or the server stops
    listening, while a second thread reads the answer (a server that refuses a body answers before it
    has all of it, and may close the connection on the rest)."""
    sock = socket.create_connection(address(url), timeout=30)
    received = bytearray()
    answered = threading.Event()

    def read() -> None:
        try:
            while not _complete(received) and (data := sock.recv(65536)):
                received.extend(data)
        except OSError:
            pass
        answered.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        sock.sendall(head)
        for chunk in chunks:
            if answered.is_set():
                break
            sock.sendall(chunk)
    except OSError:
        pass  # the server closed the connection on a refused body
    answered.wait(30)
    sock.close()
    head_bytes, _, body = bytes(received).partition(b"\r\n\r\n")
    return int(head_bytes.split(b"\r\n")[0].split()[1]), json.loads(body)


def _complete(received: bytearray) -> bool:
    """A whole response: its head, and as many body bytes as its Content-Length says."""
    head, found, body = bytes(received).partition(b"\r\n\r\n")
    length = re.search(rb"(?i)content-length: *(\d+)", head)
    return bool(found and length and len(body) >= int(length[1]))


def canvas_png(strokes: list[list[tuple[float, float]]], side: int = 448, pen: int = 36) -> bytes:
    """What the page sends: white strokes on a black square."""
    image = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(image)
    scale = side / 280
    for stroke in strokes:
        points = [(x * scale, y * scale) for x, y in stroke]
        draw.line(points, fill=255, width=pen, joint="curve")
        for x, y in (points[0], points[-1]):
            draw.ellipse([x - pen / 2, y - pen / 2, x + pen / 2, y + pen / 2], fill=255)
    return encode(image)


def photo_of(strokes: list[list[tuple[float, float]]]) -> Image.Image:
    """The strokes in dark ink on grey, unevenly lit paper."""
    drawing = np.asarray(Image.open(io.BytesIO(canvas_png(strokes))).resize((28, 28), Image.Resampling.BOX))
    return photographed(drawing)


SEVEN = [[(80, 60), (200, 60)], [(200, 60), (120, 230)]]
ONE = [[(150, 40), (138, 240)]]
FOUR = [[(90, 40), (70, 160), (200, 160)], [(170, 60), (170, 245)]]


# --- the API ----------------------------------------------------------------------------------------------


def test_api_returns_predicts_json(server, run_dir, tmp_path, capsys):
    """POST /api/predict answers with `predict --json`'s object, the upload's name as its file."""
    from seqmnist.cli import main

    data = canvas_png(SEVEN)
    (tmp_path / "seven.png").write_bytes(data)
    # On the server's one thread (serve): a single image's multiplies are too small for the engine to
    # share out, so MKL splits each itself across the threads it is given, which moves the last bits.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["predict", str(run_dir), str(tmp_path / "seven.png"), "--json"]) == 0
    finally:
        torch.set_num_threads(threads)
    expected = json.loads(capsys.readouterr().out)
    status, answer = post(server, *multipart(data, "seven.png"))
    assert status == 200
    assert answer == {**expected, "file": "seven.png"}
    assert {"label", "probabilities", "trace", "steps", "step_unit", "input"} <= set(answer)
    status, raw = post(server, data, "image/png")  # the bytes alone, as `curl --data-binary` sends them
    assert status == 200 and raw["label"] == answer["label"] and raw["file"] == "upload"
    status, settings = get(server + "api/model")
    assert status == 200 and settings["steps"] == 28 and settings["step_unit"] == "row"
    assert settings["description"].startswith("rows: 28 steps of 28 pixels") and 0 < settings["test_acc"] <= 1


def _bad_uploads() -> list[tuple[str, bytes, str, int, str]]:
    """(what, body, content type, status, a fragment of the error): every kind of upload that must fail."""
    text, text_type = multipart(b"just some text\n", "notes.txt")
    empty_file, empty_type = multipart(b"", "empty.png")
    no_image, no_image_type = multipart(b"a seven", None, field="comment")
    huge, huge_type = multipart(png_header(20_000, 20_000), "huge.png")
    blank, blank_type = multipart(encode(Image.new("L", (448, 448), 0)), "blank.png")
    truncated, truncated_type = multipart(encode(photographed(np.zeros((28, 28), np.uint8)), "PNG")[:4000])
    tiff, tiff_type = multipart(encode(Image.new("L", (60, 60), 255), "TIFF"), "scan.tiff")
    return [
        ("a text file", text, text_type, 415, "not a PNG, JPEG, GIF, BMP or WebP image"),
        ("an empty body", b"", "image/png", 400, "empty file"),
        ("an empty file", empty_file, empty_type, 400, "empty file"),
        ("a form without a file", no_image, no_image_type, 400, "no image in the form"),
        ("a 20,000 x 20,000 PNG", huge, huge_type, 413, "400,000,000 pixels is more than the limit"),
        ("a blank canvas", blank, blank_type, 422, "no digit found"),
        ("a truncated PNG", truncated, truncated_type, 400, "a truncated or corrupt PNG image"),
        ("a TIFF", tiff, tiff_type, 415, "not a PNG, JPEG, GIF, BMP or WebP image"),
        ("a broken form", b"--x\r\nnonsense", "multipart/form-data; boundary=x", 400, ""),
    ]


@pytest.mark.parametrize(("what", "body", "content_type", "status", "fragment"), _bad_uploads())
def test_bad_uploads_get_a_4xx_and_the_server_goes_on(server, what, body, content_type, status, fragment):
    answer_status, answer = post(server, body, content_type)
    assert answer_status == status, (what, answer)
    assert set(answer) == {"error"} and fragment in answer["error"] and "\n" not in answer["error"], what
    assert get(server + "api/health")[0] == 200


def test_fifty_megabytes_are_refused_unread(server):
    """By its Content-Length at once; without one (chunked), once 10 MB have been counted."""
    head = b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 52428800\r\n\r\n"
    status, answer = raw_request(server, head)  # the body never sent: the answer comes first
    assert status == 413 and "the upload is larger than the 10.0 MB limit" in answer["error"]

    block = os.urandom(1 << 20)
    chunked = (f"{len(block):x}\r\n".encode() + block + b"\r\n" for _ in range(50))
    head = b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n"
    status, answer = raw_request(server, head, chunked)
    assert status == 413 and "the upload is larger than the 10.0 MB limit" in answer["error"]
    assert get(server + "api/health")[0] == 200


def test_other_methods_and_paths(server):
    connection = http.client.HTTPConnection(*address(server), timeout=10)
    connection.request("GET", "/api/predict")
    response = connection.getresponse()
    assert response.status == 405 and "error" in json.loads(response.read())
    connection.request("GET", "/no/such/page")
    response = connection.getresponse()
    assert response.status == 404 and "error" in json.loads(response.read())
    for asset, kind in [("/", "text/html"), ("/static/app.js", "javascript"), ("/static/style.css", "text/css")]:
        connection.request("GET", asset)
        response = connection.getresponse()
        assert response.status == 200 and kind in response.getheader("content-type"), asset
        response.read()
    connection.request("GET", "/")
    response = connection.getresponse()
    assert "default-src 'self'" in response.getheader("content-security-policy")
    page = response.read().decode()
    assert "http://" not in page and "https://" not in page  # nothing from elsewhere
    connection.close()


def test_serve_refuses_a_bad_run_and_a_taken_port(run_dir, tmp_path, capsys):
    """One line and exit 2, before anything listens (in this process: both fail before the server runs)."""
    from seqmnist.cli import main

    assert main(["serve", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err == f"seqmnist: error: {tmp_path / 'nothing'}: no such run directory\n"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(run_dir), "--port", str(port)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"seqmnist: error: cannot listen on 127.0.0.1:{port} (") and err.count("\n") == 1, err


# --- load -----------------------------------------------------------------------------------------------------


def test_load(server):
    """LOAD_CLIENTS clients POST drawings and a photo as fast as answers come, for LOAD_SECONDS or
    LOAD_REQUESTS requests in all, whichever first: no errors, and the rate and latencies printed."""
    bodies = [
        multipart(canvas_png(SEVEN)),
        multipart(canvas_png(ONE)),
        multipart(canvas_png(FOUR)),
        multipart(encode(photo_of(FOUR), "JPEG"), "photo.jpg"),
    ]
    expected = [post(server, *body)[1]["label"] for body in bodies]
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + LOAD_SECONDS

    def client(index: int) -> None:
        connection = http.client.HTTPConnection(*address(server), timeout=30)
        n = index
        while time.perf_counter() < deadline:
            with lock:
                if len(latencies) + len(failures) >= LOAD_REQUESTS:
                    break
            body, content_type = bodies[n % len(bodies)]
            start = time.perf_counter()
            try:
                status, answer = post(server, body, content_type, connection)
                ok = status == 200 and answer["label"] == expected[n % len(bodies)]
                problem = "" if ok else f"{status} {answer.get('error', answer.get('label'))}"
            except (OSError, http.client.HTTPException, ValueError) as exc:
                problem = repr(exc)
                connection = http.client.HTTPConnection(*address(server), timeout=30)
            with lock:
                (failures.append(problem) if problem else latencies.append(time.perf_counter() - start))
            n += 1
        connection.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(LOAD_CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(LOAD_SECONDS + 60)
    elapsed = time.perf_counter() - started
    assert not failures, failures[:5]
    assert len(latencies) >= 50
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
    print(
        f"\nload: {LOAD_CLIENTS} clients, {len(latencies)} requests in {elapsed:.1f} s, 0 errors: "
        f"{len(latencies) / elapsed:.1f} requests/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    )
    assert get(server + "api/health")[0] == 200


# --- the page in a real browser -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Debian's Chromium, headless, through Debian's ChromeDriver (.ci/run installs both). Without them
    the test is skipped on a developer's machine, and fails in CI."""
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        if os.environ.get("CI"):
            pytest.fail("chromium and chromedriver are needed (apt-get install chromium chromium-driver)")
        pytest.skip("chromium and chromedriver not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900",
        "--disable-background-networking", "--disable-component-update", "--disable-default-apps",
        "--disable-extensions", "--disable-sync", "--no-first-run", "--metrics-recording-only", "--mute-audio",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, condition: str, timeout: float = 30) -> None:
    """Wait until the JavaScript expression ``condition`` is true on the page."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: d.execute_script(f"return {condition};"))


def draw(driver, strokes: list[list[tuple[float, float]]], kinds: list[str]) -> None:
    """Each stroke as a real pointer would draw it: down, moves every few pixels, up."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput

    pad = driver.find_element("id", "pad")
    half = pad.size["width"] / 2
    for stroke, kind in zip(strokes, kinds, strict=True):
        builder = ActionBuilder(driver, mouse=PointerInput(kind, f"{kind}-{uuid.uuid4().hex[:6]}"), duration=15)
        pointer = builder.pointer_action
        points = _densify(stroke, every=12)
        pointer.move_to(pad, points[0][0] * half / 140 - half, points[0][1] * half / 140 - half)
        pointer.pointer_down(pressure=0.5 if kind == "pen" else None)
        for x, y in points[1:]:
            pointer.move_to(pad, x * half / 140 - half, y * half / 140 - half, pressure=0.5 if kind == "pen" else None)
        pointer.pointer_up()
        builder.perform()


def _densify(stroke: list[tuple[float, float]], every: float) -> list[tuple[float, float]]:
    points = [stroke[0]]
    for (x0, y0), (x1, y1) in itertools.pairwise(stroke):
        n = max(1, int(np.hypot(x1 - x0, y1 - y0) / every))
        points += [(x0 + (x1 - x0) * i / n, y0 + (y1 - y0) * i / n) for i in range(1, n + 1)]
    return points


READ_HEATMAP = """
const c = document.getElementById('heatmap'), ctx = c.getContext('2d');
const all = ctx.getImageData(0, 0, c.width, c.height).data;
let painted = 0;
for (let i = 3; i < all.length; i += 4) painted += all[i] > 0;
const w = c.width / 10, band = c.height / Number(document.body.dataset.steps);
const last = [];
for (let d = 0; d < 10; d++) {
  const p = ctx.getImageData(Math.floor(d * w + 3), Math.floor(c.height - band + 2), 1, 1).data;
  last.push(p[0] + p[1] + p[2]);
}
return {painted: painted / (c.width * c.height), last: last, steps: Number(c.dataset.stepsPainted)};
"""

READ_INPUT = """
const c = document.getElementById('input'), ctx = c.getContext('2d'), cell = c.width / 28, out = [];
for (let y = 0; y < 28; y++) {
  const row = [];
  for (let x = 0; x < 28; x++) {
    row.push(ctx.getImageData(Math.floor((x + .5) * cell), Math.floor((y + .5) * cell), 1, 1).data[0]);
  }
  out.push(row);
}
return out;
"""


def test_page_draw_a_digit_and_watch_it_read(server, browser, tmp_path):
    """Draw a 7 (mouse, then pen) and a 1 (finger) on the page; read the answer, the input and the
    heatmap off the page; they are what the API says for the very image the page drew."""
    driver = browser
    driver.get(server)
    wait_for(driver, "document.body.dataset.state === 'idle'")
    assert "test accuracy" in driver.find_element("id", "accuracy").text
    assert driver.find_element("id", "description").text.startswith("rows: 28 steps")
    origins = driver.execute_script("return performance.getEntriesByType('resource').map(e => new URL(e.name).origin)")
    assert set(origins) <= {server.rstrip("/")}  # every asset from the app itself

    for strokes, kinds, digit in [(SEVEN, ["mouse", "pen"], 7), (ONE, ["touch"], 1)]:
        driver.find_element("id", "clear").click()
        wait_for(driver, "document.getElementById('label').dataset.label === ''")
        draw(driver, strokes, kinds)
        time.sleep(0.5)  # past the wait after the last stroke: a prediction is on its way
        wait_for(driver, "document.body.dataset.state === 'done'")
        label = int(driver.find_element("id", "label").get_attribute("data-label"))
        drawn = base64.b64decode(
            driver.execute_script("return document.getElementById('pad').toDataURL('image/png')").split(",", 1)[1]
        )
        status, answer = post(server, *multipart(drawn))
        assert status == 200 and answer["label"] == label, (digit, answer["label"], label)
        assert label == digit, f"the page read a drawn {digit} as {label}"
        heatmap = driver.execute_script(READ_HEATMAP)
        assert heatmap["steps"] == 28 and heatmap["painted"] > 0.99
        assert int(np.argmax(heatmap["last"])) == answer["trace"][-1]["prediction"] == label
        assert driver.execute_script(READ_INPUT) == answer["input"]
        bars = [float(v.text.strip("<>%")) for v in driver.find_elements("css selector", "#bars .value")]
        assert int(np.argmax(bars)) == label
        assert f" {label} " in driver.find_element("id", "settled").text  # when it made up its mind
        driver.save_screenshot(str(tmp_path / f"page-{digit}.png"))
        if SHOTS and digit == 7:
            driver.save_screenshot(str(Path(SHOTS) / "page.png"))
        if digit == 7:  # the reading again: the heatmap fills in step by step
            driver.find_element("id", "replay").click()
            wait_for(driver, "(n => n > 8 && n < 20)(Number(document.getElementById('heatmap').dataset.stepsPainted))")
            if SHOTS:
                driver.save_screenshot(str(Path(SHOTS) / "page-reading.png"))
            partly = driver.execute_script(READ_HEATMAP)
            assert 0.25 < partly["painted"] < 0.8  # the rows not yet read are not painted yet
            wait_for(driver, "document.getElementById('heatmap').dataset.stepsPainted === '28'")
    assert (tmp_path / "page-7.png").stat().st_size > 10_000


def test_page_shows_a_bad_upload_in_one_line(server, browser, tmp_path):
    driver = browser
    driver.get(server)
    wait_for(driver, "document.body.dataset.state === 'idle'")
    notes = tmp_path / "notes.png"
    notes.write_text("this is not a picture")
    driver.find_element("id", "upload").send_keys(str(notes))
    wait_for(driver, "document.body.dataset.state === 'error'")
    assert driver.find_element("id", "status").text == "not a PNG, JPEG, GIF, BMP or WebP image"
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(encode(photo_of(SEVEN), "JPEG"))
    driver.find_element("id", "upload").send_keys(str(photo))
    wait_for(driver, "document.body.dataset.state === 'done'")
    assert driver.find_element("id", "status").text.startswith("photo.jpg: ")
