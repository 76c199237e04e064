"""Finding, fetching, verifying and parsing MNIST, on real files and real bytes."""

import gzip
import hashlib
import http.server
import shutil
import socket
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqmnist import seed
from seqmnist.data import MNIST, RESOURCES, Resource, download, parse_idx, read_bytes, resolve_dir
from seqmnist.errors import SeqmnistError


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_real_data_has_the_seeds_split(mnist):
    assert mnist.train_x.shape == (50000, 28, 28)
    assert mnist.val_x.shape == (10000, 28, 28)
    assert mnist.test_x.shape == (10000, 28, 28)
    assert mnist.train_x.dtype == torch.uint8 and mnist.train_x.min() == 0 and mnist.train_x.max() == 255
    assert mnist.train_y[:5].tolist() == [5, 0, 4, 1, 9]  # the well-known first training labels
    assert mnist.test_y[:5].tolist() == [7, 2, 1, 0, 4]
    assert sorted(mnist.val_y.unique().tolist()) == list(range(10))


def test_raw_and_gzip_files_read_alike(mnist_dir, tmp_path):
    for resource in RESOURCES.values():
        (tmp_path / resource.name).write_bytes(gzip.decompress((mnist_dir / f"{resource.name}.gz").read_bytes()))
    raw = MNIST.load(tmp_path)
    gz = MNIST.load(mnist_dir)
    assert np.array_equal(raw.test_x.numpy(), gz.test_x.numpy())
    assert np.array_equal(raw.train_y.numpy(), gz.train_y.numpy())


# The SHA-256 of each decompressed IDX file, as the shared copy's SHA256SUMS publishes them (here, so
# that a copy without that file, as the download cache, is checked too).
IDX_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}


def test_decompressed_content_matches_published_sha256(mnist_dir):
    for resource in RESOURCES.values():
        digest = hashlib.sha256(read_bytes(mnist_dir / f"{resource.name}.gz")).hexdigest()
        assert digest == IDX_SHA256[resource.name]


def test_parse_good_idx():
    images = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    parsed = parse_idx(idx_bytes(images), "x", (2, 28, 28))
    assert np.array_equal(parsed, images)


@pytest.mark.parametrize(
    ("data", "shape", "message"),
    [
        (b"", (3,), "too short"),
        (b"\x08\x03\x00\x01" + b"\x00" * 10, (3,), "bad magic number"),
        (idx_bytes(np.zeros(3), type_code=0x0D), (3,), "element type 0x0d"),
        (idx_bytes(np.zeros((3, 2))), (3,), "2 dimensions, expected 1"),
        (idx_bytes(np.zeros(4)), (3,), "dimensions (4,), expected (3,)"),
        (idx_bytes(np.zeros((2, 27, 28))), (2, 28, 28), "dimensions (2, 27, 28)"),
        (idx_bytes(np.zeros(3))[:-1], (3,), "2 data bytes, expected 3"),
        (idx_bytes(np.zeros(3)) + b"\x00", (3,), "4 data bytes, expected 3"),
        (bytes([0, 0, 8, 3, 0, 0]), (2, 28, 28), "truncated header"),
    ],
)
def test_parse_bad_idx(data, shape, message):
    with pytest.raises(SeqmnistError, match="^name: ") as info:
        parse_idx(data, "name", shape)
    assert message in str(info.value)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.sampled_from([(3,), (2, 2, 2), (0,)]))
def test_parse_any_bytes_gives_array_or_clean_error(data, shape):
    try:
        array = parse_idx(data, "f", shape)
    except SeqmnistError as exc:
        assert str(exc).startswith("f: ")
    else:
        assert array.shape == shape and array.dtype == np.uint8


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=80).map(lambda b: b"\x1f\x8b" + b))
def test_read_any_gzip_garbage_gives_bytes_or_clean_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("gz") / "f.gz"
    path.write_bytes(data)
    try:
        assert isinstance(read_bytes(path), bytes)
    except SeqmnistError as exc:
        assert str(path) in str(exc)


def copy_mnist(src: Path, dst: Path) -> Path:
    dst.mkdir(exist_ok=True)
    for resource in RESOURCES.values():
        shutil.copy(src / f"{resource.name}.gz", dst)
    return dst


def test_missing_file_names_it_and_says_how_to_fix(mnist_dir, tmp_path):
    copy_mnist(mnist_dir, tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(SeqmnistError, match="t10k-labels-idx1-ubyte.*missing.*SEQMNIST_DATA"):
        MNIST.load(tmp_path)


def test_truncated_gzip_is_named(mnist_dir, tmp_path):
    copy_mnist(mnist_dir, tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(SeqmnistError, match="train-labels-idx1-ubyte.gz: corrupt or truncated gzip"):
        MNIST.load(tmp_path)


def test_labels_out_of_range_are_named(mnist_dir, tmp_path):
    copy_mnist(mnist_dir, tmp_path)
    labels = np.zeros(10000, dtype=np.uint8)
    labels[17] = 12
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    with pytest.raises(SeqmnistError, match="t10k-labels-idx1-ubyte.gz: label 12 at index 17 is outside 0..9"):
        MNIST.load(tmp_path)


def test_other_dataset_sizes_are_rejected(mnist_dir, tmp_path):
    copy_mnist(mnist_dir, tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros((500, 28, 28)))))
    with pytest.raises(SeqmnistError, match=r"t10k-images-idx3-ubyte.gz: dimensions \(500, 28, 28\)"):
        MNIST.load(tmp_path)


def test_resolve_order(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQMNIST_DATA", str(tmp_path))
    assert resolve_dir(None) == (tmp_path, False)
    other = tmp_path / "other"
    other.mkdir()
    assert resolve_dir(other) == (other, False)
    monkeypatch.delenv("SEQMNIST_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert resolve_dir(None) == (tmp_path / "cache" / "seqmnist" / "mnist", True)
    with pytest.raises(SeqmnistError, match="not a directory"):
        resolve_dir(tmp_path / "nope")


@pytest.fixture
def http_dir(tmp_path):
    """A real HTTP server on 127.0.0.1 serving tmp_path/served; under /truncated/ it announces each
    file's whole length but sends only half of it, then closes."""
    served = tmp_path / "served"
    served.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def translate_path(self, path):
            return super().translate_path(path.removeprefix("/truncated"))

        def copyfile(self, source, outputfile):
            body = source.read()
            outputfile.write(body[: len(body) // 2] if self.path.startswith("/truncated/") else body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture
def silent_server():
    """A server on 127.0.0.1 that accepts connections (the kernel completes them) and never answers."""
    with socket.create_server(("127.0.0.1", 0), backlog=8) as listener:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/"


def test_download_verifies_md5_and_writes_atomically(http_dir, tmp_path):
    served, url = http_dir
    payload = gzip.compress(idx_bytes(np.arange(5)))
    (served / "tiny.gz").write_bytes(payload)
    target = tmp_path / "cache"
    good = Resource("tiny", hashlib.md5(payload).hexdigest(), (5,))
    bad = Resource("tiny", "0" * 32, (5,))

    with pytest.raises(SeqmnistError, match="MD5"):
        download(bad, target, mirrors=(url,))
    assert list(target.iterdir()) == []  # nothing partial or unverified left behind

    missing = Resource("absent", good.md5, (5,))
    with pytest.raises(SeqmnistError, match="could not download absent.gz.*404"):
        download(missing, target, mirrors=(url,))

    path = download(good, target, mirrors=("http://127.0.0.1:9/", url))  # first mirror refuses
    assert path.read_bytes() == payload
    assert list(target.iterdir()) == [path]


def test_cache_download_when_offline_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("SEQMNIST_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(SeqmnistError, match="could not download.*--data-dir or SEQMNIST_DATA"):
        MNIST.load(mirrors=("http://127.0.0.1:9/",))


# --- every bad download refused, for MNIST and for a seed model: one line, and nothing left behind ---


def mnist_downloader(payload: bytes, served: Path, monkeypatch):
    """MNIST's downloader for one tiny .gz whose MD5 is the payload's, and the name it is served under."""
    resource = Resource("tiny", hashlib.md5(payload).hexdigest(), (5,))
    return "tiny.gz", lambda target, base, timeout: download(resource, target, mirrors=(base,), timeout=timeout)


def seed_downloader(payload: bytes, served: Path, monkeypatch):
    """The seed models' downloader for rnn_step28.model, its pinned SHA-256 made the payload's."""
    monkeypatch.setitem(seed.SEED_MODEL_SHA256, 28, hashlib.sha256(payload).hexdigest())
    return "rnn_step28.model", lambda target, base, timeout: seed.download_seed_model(28, target, base, timeout)


@pytest.mark.parametrize("make_downloader", [mnist_downloader, seed_downloader], ids=["mnist", "seed-model"])
@pytest.mark.parametrize(
    ("case", "message"),
    [
        pytest.param("good", None, id="good"),
        pytest.param("truncated", r"truncated: 50000 of 100000 bytes", id="truncated"),
        pytest.param("wrong checksum", r"(MD5|SHA256) [0-9a-f]+, expected [0-9a-f]+", id="wrong-checksum"),
        pytest.param("silent server", r"timed out", id="silent-server"),
    ],
)
def test_downloads_are_verified_and_bad_ones_leave_nothing(
    make_downloader, case, message, http_dir, silent_server, tmp_path, monkeypatch
):
    served, url = http_dir
    payload = np.random.default_rng(0).bytes(100_000)
    name, fetch = make_downloader(payload, served, monkeypatch)
    (served / name).write_bytes(payload[::-1] if case == "wrong checksum" else payload)
    base = {"truncated": url + "truncated/", "silent server": silent_server}.get(case, url)
    target = tmp_path / "cache"
    started = time.monotonic()
    if message is None:
        assert fetch(target, base, 5.0).read_bytes() == payload
        assert [p.name for p in target.iterdir()] == [name]
        return
    with pytest.raises(SeqmnistError, match=f"^could not download {name} .*{message}") as info:
        fetch(target, base, 0.3)
    assert "\n" not in str(info.value)
    assert time.monotonic() - started < 3
    assert list(target.iterdir()) == []  # neither the file nor a temporary one


def test_files_in_mnists_format_that_are_not_mnists_are_said_to_be_so(mnist_dir, tmp_path, capsys):
    """Digits in MNIST's format but not MNIST's own (here its test labels, two swapped): the data loads,
    and one line says the accuracies are not MNIST's; MNIST's own bytes compressed anew are MNIST's."""
    for path in Path(mnist_dir).glob("*.gz"):
        shutil.copy(path, tmp_path / path.name)
    images = tmp_path / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes()), compresslevel=1, mtime=0))
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    swapped = bytearray(gzip.decompress(labels.read_bytes()))
    swapped[8], swapped[9] = swapped[9], swapped[8]  # the first two labels (7, 2)
    labels.write_bytes(gzip.compress(bytes(swapped)))
    data = MNIST.load(tmp_path)
    assert data.test_y[:2].tolist() == [2, 7]
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "t10k-labels-idx1-ubyte.gz do not hold MNIST's own images and labels" in line
    assert "t10k-images" not in line
    MNIST.load(mnist_dir)
    assert capsys.readouterr().err == ""  # the real files: not a word
