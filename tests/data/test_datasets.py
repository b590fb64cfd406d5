"""IDX parsing, checksums, the search order, downloads from a local server, and the offline error."""

import dataclasses
import functools
import gzip
import hashlib
import http.server
import socket
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minidl.data import datasets
from minidl.data.datasets import DatasetError, DatasetNotFoundError, IdxFile, parse_idx, read_idx

DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(array, type_code=0x08):
    """Hand-built IDX: 0x0000, the type byte, ndim, big-endian uint32 sizes, big-endian data."""
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def tiny_dataset_arrays(seed=0):
    """Four small arrays shaped like a dataset: images (5, 4, 3), labels (5,), images (2, 4, 3), labels (2,)."""
    rng = np.random.default_rng(seed)
    return [
        rng.integers(0, 256, size=(5, 4, 3), dtype=np.uint8),
        rng.integers(0, 10, size=5, dtype=np.uint8),
        rng.integers(0, 256, size=(2, 4, 3), dtype=np.uint8),
        rng.integers(0, 10, size=2, dtype=np.uint8),
    ]


NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def tiny_spec(arrays, base_url="http://127.0.0.1:9/", system_dir=None, system_package=None):
    """A dataset spec whose checksums are those of ``arrays`` (archives gzipped with mtime 0)."""
    files = tuple(
        IdxFile(name, archive_sha256=sha256(gzip.compress(idx_bytes(a), mtime=0)), payload_sha256=sha256(idx_bytes(a)))
        for name, a in zip(NAMES, arrays)
    )
    return datasets.DatasetSpec("tiny", "Tiny", base_url, files, system_dir, system_package)


def write_dataset(directory, arrays, gzipped=True):
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in zip(NAMES, arrays):
        data = idx_bytes(array)
        if gzipped:
            (directory / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
        else:
            (directory / name).write_bytes(data)


@pytest.fixture(autouse=True)
def isolated_locations(monkeypatch, tmp_path):
    """No MINIDL_DATA_DIR and a fresh user cache for every test."""
    monkeypatch.delenv("MINIDL_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


# --- IDX parsing -----------------------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(
    shape=st.lists(st.integers(0, 5), min_size=1, max_size=4),
    type_code=st.sampled_from(sorted(datasets.IDX_DTYPES)),
    seed=st.integers(0, 2**16),
)
def test_parse_idx_round_trips_every_type_and_shape(shape, type_code, seed):
    dtype = datasets.IDX_DTYPES[type_code].newbyteorder("=")
    array = np.random.default_rng(seed).integers(0, 100, size=shape).astype(dtype)
    parsed = parse_idx(idx_bytes(array, type_code))
    assert parsed.shape == tuple(shape)
    assert parsed.dtype == dtype
    np.testing.assert_array_equal(parsed, array)


def test_idx_header_is_read_as_big_endian_dimensions():
    array = np.arange(2 * 300 * 1, dtype=np.uint8).reshape(2, 300, 1)
    data = idx_bytes(array)
    assert data[:4] == b"\x00\x00\x08\x03"
    assert data[4:16] == b"\x00\x00\x00\x02\x00\x00\x01\x2c\x00\x00\x00\x01"
    assert parse_idx(data).shape == (2, 300, 1)


def test_read_idx_gives_the_same_array_from_gzipped_and_plain_files(tmp_path):
    array = np.arange(60, dtype=np.uint8).reshape(5, 3, 4)
    (tmp_path / "plain").write_bytes(idx_bytes(array))
    (tmp_path / "packed.gz").write_bytes(gzip.compress(idx_bytes(array)))
    np.testing.assert_array_equal(read_idx(tmp_path / "plain"), array)
    np.testing.assert_array_equal(read_idx(tmp_path / "packed.gz"), array)


@pytest.mark.parametrize(
    "data, expected_message",
    [
        (b"\x00\x00", "too short"),
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x07", "bad IDX magic number 0x01000801"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x07", "bad IDX magic number 0x00000701"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x01\x00\x00", "truncated IDX header"),
        (idx_bytes(np.zeros((3, 2, 2), np.uint8))[:-1], "IDX data truncated"),
        (idx_bytes(np.zeros((3, 2, 2), np.uint8)) + b"\x00", "IDX data has trailing bytes"),
    ],
    ids=["short", "nonzero-magic", "unknown-type", "short-header", "truncated-data", "trailing-bytes"],
)
def test_malformed_idx_is_rejected_with_the_file_name_and_the_problem(tmp_path, data, expected_message):
    bad_file = tmp_path / "bad-idx"
    bad_file.write_bytes(data)
    with pytest.raises(DatasetError, match=expected_message) as caught:
        read_idx(bad_file)
    assert str(bad_file) in str(caught.value)


def test_truncated_gzip_is_rejected_not_half_loaded(tmp_path):
    packed = gzip.compress(idx_bytes(np.zeros((100, 28, 28), np.uint8)))
    bad_file = tmp_path / "cut.gz"
    bad_file.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DatasetError, match="corrupt or truncated gzip") as caught:
        read_idx(bad_file)
    assert str(bad_file) in str(caught.value)


# --- checksums and search order ----------------------------------------------------------------------

@pytest.mark.parametrize("gzipped", [True, False], ids=["gzipped", "plain"])
def test_dataset_loads_from_the_path_argument_gzipped_or_plain(tmp_path, gzipped):
    arrays = tiny_dataset_arrays()
    write_dataset(tmp_path / "given", arrays, gzipped=gzipped)
    (x_train, y_train), (x_test, y_test) = datasets.load_idx_dataset(tiny_spec(arrays), path=tmp_path / "given")
    for loaded, expected in zip((x_train, y_train, x_test, y_test), arrays):
        np.testing.assert_array_equal(loaded, expected)
        assert loaded.dtype == np.uint8


def test_recompressed_file_passes_on_its_content_checksum(tmp_path):
    arrays = tiny_dataset_arrays()
    write_dataset(tmp_path / "given", arrays)
    name = NAMES[0]
    (tmp_path / "given" / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(arrays[0]), compresslevel=1, mtime=12345))
    (x_train, _), _ = datasets.load_idx_dataset(tiny_spec(arrays), path=tmp_path / "given")
    np.testing.assert_array_equal(x_train, arrays[0])


def test_file_with_valid_format_but_wrong_content_fails_its_checksum(tmp_path):
    arrays = tiny_dataset_arrays()
    write_dataset(tmp_path / "given", arrays)
    tampered = arrays[1].copy()
    tampered[0] ^= 1
    (tmp_path / "given" / f"{NAMES[1]}.gz").write_bytes(gzip.compress(idx_bytes(tampered)))
    with pytest.raises(DatasetError, match="checksum mismatch") as caught:
        datasets.load_idx_dataset(tiny_spec(arrays), path=tmp_path / "given")
    assert f"{NAMES[1]}.gz" in str(caught.value)


def test_search_order_is_path_then_env_then_cache_then_system(tmp_path, monkeypatch):
    arrays = [tiny_dataset_arrays(seed) for seed in range(4)]
    places = [tmp_path / "given", tmp_path / "env", tmp_path / "cache" / "minidl" / "tiny", tmp_path / "system"]
    for place, place_arrays in zip(places, arrays):
        write_dataset(place, place_arrays)
    monkeypatch.setenv("MINIDL_DATA_DIR", str(places[1]))
    spec = tiny_spec(arrays[0], system_dir=str(places[3]))

    assert datasets.find_dataset_dir(spec, path=places[0]) == places[0]
    assert datasets.find_dataset_dir(spec) == places[1]
    monkeypatch.delenv("MINIDL_DATA_DIR")
    assert datasets.find_dataset_dir(spec) == places[2]
    for name in NAMES:
        (places[2] / f"{name}.gz").unlink()
    assert datasets.find_dataset_dir(spec) == places[3]


def test_directory_missing_one_file_is_passed_over(tmp_path):
    arrays = tiny_dataset_arrays()
    write_dataset(tmp_path / "partial", arrays)
    write_dataset(tmp_path / "system", arrays)
    (tmp_path / "partial" / f"{NAMES[3]}.gz").unlink()
    spec = tiny_spec(arrays, system_dir=str(tmp_path / "system"))
    assert datasets.find_dataset_dir(spec, path=tmp_path / "partial") == tmp_path / "system"


def test_user_cache_honours_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert datasets.user_cache_dir(datasets.MNIST) == tmp_path / "xdg" / "minidl" / "mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert datasets.user_cache_dir(datasets.FASHION_MNIST) == tmp_path / "home" / ".cache" / "minidl" / "fashion-mnist"


# --- downloads from a server on 127.0.0.1 --------------------------------------------------------------

@pytest.fixture
def local_server(tmp_path):
    """An HTTP server on 127.0.0.1 serving ``tmp_path / "served"``; yields ``(base_url, requested_paths)``."""
    served = tmp_path / "served"
    served.mkdir()
    requested = []

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requested.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", requested
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_missing_files_are_downloaded_verified_and_cached(tmp_path, local_server):
    base_url, requested = local_server
    arrays = tiny_dataset_arrays()
    write_dataset(tmp_path / "served", arrays)
    spec = tiny_spec(arrays, base_url=base_url)

    (x_train, _), (_, y_test) = datasets.load_idx_dataset(spec)
    np.testing.assert_array_equal(x_train, arrays[0])
    np.testing.assert_array_equal(y_test, arrays[3])
    cache = tmp_path / "cache" / "minidl" / "tiny"
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{name}.gz" for name in NAMES)
    assert len(requested) == 4

    datasets.load_idx_dataset(spec)
    assert len(requested) == 4, "a second load reads the cache"


def test_only_the_files_missing_from_the_cache_are_downloaded(tmp_path, local_server):
    base_url, requested = local_server
    arrays = tiny_dataset_arrays()
    write_dataset(tmp_path / "served", arrays)
    cache = tmp_path / "cache" / "minidl" / "tiny"
    write_dataset(cache, arrays)
    for name in NAMES[2:]:
        (cache / f"{name}.gz").unlink()
    datasets.load_idx_dataset(tiny_spec(arrays, base_url=base_url))
    assert sorted(requested) == sorted(f"/{name}.gz" for name in NAMES[2:])


def test_download_with_wrong_checksum_leaves_nothing_in_the_cache(tmp_path, local_server):
    base_url, _ = local_server
    arrays = tiny_dataset_arrays()
    write_dataset(tmp_path / "served", tiny_dataset_arrays(seed=99))
    with pytest.raises(DatasetError, match="failed verification") as caught:
        datasets.load_idx_dataset(tiny_spec(arrays, base_url=base_url))
    assert f"{base_url}{NAMES[0]}.gz" in str(caught.value)
    assert list((tmp_path / "cache" / "minidl" / "tiny").iterdir()) == []


def closed_local_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_offline_error_names_every_place_looked_and_how_to_get_the_files(tmp_path):
    base_url = f"http://127.0.0.1:{closed_local_port()}/fashion/"
    spec = dataclasses.replace(datasets.FASHION_MNIST, base_url=base_url, system_dir=str(tmp_path / "no-debian"))
    with pytest.raises(DatasetNotFoundError) as caught:
        datasets.load_idx_dataset(spec, path=tmp_path / "mine")
    message = str(caught.value)
    for expected in (
        f"path= argument: {tmp_path / 'mine'} (no such directory)",
        "$MINIDL_DATA_DIR: not set",
        f"user cache: {tmp_path / 'cache' / 'minidl' / 'fashion-mnist'}",
        f"Debian package dataset-fashion-mnist: {tmp_path / 'no-debian'} (no such directory)",
        f"Downloading from {base_url} failed",
        "apt-get install dataset-fashion-mnist",
        "train-images-idx3-ubyte.gz",
    ):
        assert expected in message


def test_offline_mnist_error_says_debian_has_no_package(tmp_path):
    spec = dataclasses.replace(datasets.MNIST, base_url=f"http://127.0.0.1:{closed_local_port()}/")
    with pytest.raises(DatasetNotFoundError, match="Debian has no MNIST package"):
        datasets.load_idx_dataset(spec)


# --- the real files --------------------------------------------------------------------------------------

@pytest.mark.skipif(not DEBIAN_FASHION_DIR.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist_matches_the_known_checksums_and_shapes():
    (x_train, y_train), (x_test, y_test) = datasets.load_fashion_mnist()
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert y_train.shape == (60000,) and y_test.shape == (10000,)
    assert x_train.dtype == y_train.dtype == np.uint8
    assert set(np.unique(y_train)) == set(range(10))
    assert np.bincount(y_test).tolist() == [1000] * 10
