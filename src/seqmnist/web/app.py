"""The draw-a-digit page and its API, a Starlette app served by uvicorn.

    GET  /               the page (static/index.html), its script and style under /static/
    GET  /api/health     {"status": "ok"}: the server is up and its model loaded
    GET  /api/model      the run's settings the page needs: steps, what a step reads, the pixel order
    POST /api/predict    an image (a multipart upload, or the raw bytes as the body) -> the JSON of
                         ``seqmnist predict --json``; a bad upload gets a 4xx and {"error": "one line"}

The upload's size is checked against MAX_BYTES by its Content-Length before its body is read, and
counted as it streams in (a body without a length, or one longer than it said, is cut off there), so a
50 MB upload never sits in memory. The image is then read by :func:`seqmnist.predict.prepare`, which
checks its format and its header's pixel count before decoding. Decoding and the model run in worker
threads, a few at a time, so the server answers other requests meanwhile.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import torch
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Message

from ..errors import SeqmnistError
from ..images import FORMATS, MAX_BYTES, MAX_PIXELS, ImageRejected
from ..predict import predict_inputs, prepare, step_unit
from ..runs import TrainedModel, load_run, round_accuracy

STATIC = Path(__file__).parent / "static"
FORM_SLACK = 64 * 1024  # a multipart body's boundaries and headers around the image
TOO_LARGE = f"the upload is larger than the {MAX_BYTES / 2**20:.1f} MB limit"
WORKERS = 4  # uploads decoded at once: bounds the memory a burst of large images takes
# The page loads nothing from elsewhere, and runs no script it did not get from this server.
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def read_image(trained: TrainedModel, data: bytes, name: str) -> dict:
    """An upload's answer, in a worker thread: several at once (Pillow and NumPy release the GIL, and
    the model gives each thread its own engine buffers)."""
    return predict_inputs(trained, [prepare(data)], [name])[0]


def model_settings(trained: TrainedModel) -> dict:
    """What the page shows and needs to replay the reading: the description, the steps and, for the
    permuted task, the order the pixels are read in."""
    config = trained.config
    summary = trained.run.summary
    test_acc = None
    if summary.exists():
        from ..files import read_json

        saved = read_json(summary)
        if isinstance(saved, dict) and isinstance(saved.get("confusion_matrix"), list):
            test_acc = round_accuracy(saved.get("test_acc"), sum(map(sum, saved["confusion_matrix"])))
    sequencer = trained.sequencer
    order = sequencer.order
    return {
        "run": trained.run.dir.name,
        "description": config.describe(),
        "task": config.task.task,
        "cell": config.model.cell,
        "readout": config.model.readout,
        "one_view": trained.model.readout.running_is_step_softmax,  # its running belief is each step's own
        "input_scale": config.task.input_scale,
        "steps": sequencer.steps,
        "pixels_per_step": sequencer.pixels_per_step,
        "step_unit": step_unit(trained),
        "order": None if order is None else [int(i) for i in order],
        "test_acc": test_acc,
        "limits": {"max_bytes": MAX_BYTES, "max_pixels": MAX_PIXELS, "formats": list(FORMATS)},
    }


def create_app(run_dir: Path | str, best: bool = False) -> Starlette:
    """The app for one run directory (any run ``train`` or ``import-theano`` made; with ``best``, its
    best-validation weights). The run is loaded now, so a bad run directory fails here, before the
    server listens."""
    trained = load_run(Path(run_dir), best)
    settings = model_settings(trained)
    limiter = anyio.CapacityLimiter(WORKERS)

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_POLICY})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "run": settings["run"]})

    async def model(request: Request) -> Response:
        return JSONResponse(settings)

    async def predict(request: Request) -> Response:
        data, name = await read_upload(request)
        try:
            result = await anyio.to_thread.run_sync(read_image, trained, data, name, limiter=limiter)
        except ImageRejected as exc:
            return error(exc.status, str(exc))
        return JSONResponse(result)

    routes = [
        Route("/", page),
        Route("/api/health", health),
        Route("/api/model", model),
        Route("/api/predict", predict, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def http_error(request: Request, exc: Exception) -> Response:
    """Every HTTP error as {"error": "one line"} (404s and 405s included), for the page and for curl."""
    assert isinstance(exc, HTTPException)
    return error(exc.status_code, str(exc.detail))


async def read_upload(request: Request) -> tuple[bytes, str]:
    """The uploaded image's bytes and name: the multipart form's file (field ``image``, else the only
    file), or the raw body. The body is refused past MAX_BYTES by its length or as it is counted."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BYTES + FORM_SLACK):
        raise HTTPException(413, TOO_LARGE)
    request = Request(request.scope, counting_receive(request.receive, MAX_BYTES + FORM_SLACK))
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        return await request.body(), "upload"
    async with request.form(max_files=1, max_fields=8) as form:
        files = [value for value in form.values() if isinstance(value, UploadFile)]
        upload = form.get("image") if isinstance(form.get("image"), UploadFile) else (files[0] if files else None)
        if not isinstance(upload, UploadFile):
            raise HTTPException(400, "no image in the form: send the file as the field 'image'")
        return await upload.read(MAX_BYTES + 1), upload.filename or "upload"


def counting_receive(receive: Callable[[], Awaitable[Message]], limit: int) -> Callable[[], Awaitable[Message]]:
    """``receive`` that stops the request once its body passes ``limit`` bytes."""
    received = 0

    async def counted() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise HTTPException(413, TOO_LARGE)
        return message

    return counted


# --- serving -------------------------------------------------------------------------------------------


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port now, so a port in use is one line, not a server's log."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise SeqmnistError(f"--host {host}: not an address to listen on ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise SeqmnistError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port") from None
    sock.listen(128)
    return sock


def serve(
    run_dir: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    announce: Callable[[str], None] = print,
    best: bool = False,
) -> None:
    """Serve the page for ``run_dir`` until interrupted. One thread for the model's arithmetic: a single
    image is too small to share out, and the requests themselves run side by side."""
    import uvicorn

    if not 0 <= port <= 65535:
        raise SeqmnistError(f"--port must be in 0..65535 (got {port})")
    app = create_app(run_dir, best)
    sock = listen(host, port)
    torch.set_num_threads(1)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    weights = " (best-validation weights)" if best else ""
    announce(f"serving {run_dir}{weights} at http://{shown}:{bound_port}/ (Ctrl-C to stop)")
    if bound_host not in ("127.0.0.1", "::1"):
        announce("note: the page has no password; anyone who can reach this address can use it")
    sys.stdout.flush()
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2)
    uvicorn.Server(config).run(sockets=[sock])
