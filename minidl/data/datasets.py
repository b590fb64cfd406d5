"""MNIST and Fashion-MNIST from their IDX files: find, download, verify, parse.

``load_fashion_mnist()`` and ``load_mnist()`` return ``(x_train, y_train), (x_test, y_test)`` like Keras:
uint8 images ``(N, 28, 28)`` and uint8 labels ``(N,)``.  The four files of a dataset (each gzipped or
plain) are looked for, in order, in:

1. the ``path=`` argument;
2. the directory named by the environment variable ``MINIDL_DATA_DIR``;
3. the user cache, ``$XDG_CACHE_HOME/minidl/<dataset>`` (default ``~/.cache/minidl/<dataset>``);
4. the directory a Debian package installs (``/usr/share/datasets/fashion-mnist`` from
   ``dataset-fashion-mnist``; Debian has no MNIST package).

The first directory holding all four files is used.  When none does, the files are downloaded from
the dataset's canonical location into the cache, each verified against its SHA-256 before it is moved
into place (temporary file + ``os.replace``, so a crash never leaves half a file under the real name).

Every file is verified before it is parsed: either its bytes are the canonical archive (``archive_sha256``)
or its uncompressed IDX bytes are the canonical content (``payload_sha256``).  The second form accepts a
plain (gunzipped) file and Debian's re-compressed one, whose gzip headers differ from the original's.

IDX format (http://yann.lecun.com/exdb/mnist/): two zero bytes, one type byte (0x08 = uint8, ...), one
byte giving the number of dimensions ``ndim``, then ``ndim`` big-endian uint32 sizes, then the data,
big-endian, row-major, exactly ``prod(sizes)`` items.
"""

import dataclasses
import gzip
import hashlib
import os
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from minidl.utils import atomic_write

GZIP_MAGIC = b"\x1f\x8b"

# IDX type byte -> big-endian numpy dtype.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

DOWNLOAD_TIMEOUT_S = 60


class DatasetError(Exception):
    """A dataset file is missing, corrupt, truncated or does not match its checksum."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """No directory holds the dataset's files and downloading them failed."""


@dataclasses.dataclass(frozen=True)
class IdxFile:
    """One file of a dataset, named without ``.gz``, with the SHA-256 sums it may match."""

    name: str
    archive_sha256: str  # of ``name + ".gz"`` exactly as served at the canonical URL
    payload_sha256: str  # of the uncompressed IDX bytes


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset lives and how to recognise its four files.

    ``files`` is ``(train_images, train_labels, test_images, test_labels)``.  ``base_url`` is the
    canonical download folder (each file is fetched as ``base_url + name + ".gz"``); ``system_dir`` is
    where a distribution package installs the files, ``system_package`` that package's name.
    """

    name: str
    title: str
    base_url: str
    files: tuple
    system_dir: str | None = None
    system_package: str | None = None


# Archive sums: TensorFlow Datasets' published url_checksums/fashion_mnist.txt.  Payload sums: computed
# from the uncompressed files of Debian's dataset-fashion-mnist package; the MD5s of those same
# uncompressed files equal the ones torchvision's FashionMNIST publishes for the raw files.
FASHION_MNIST = DatasetSpec(
    name="fashion-mnist",
    title="Fashion-MNIST",
    base_url="https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    files=(
        IdxFile(
            "train-images-idx3-ubyte",
            archive_sha256="3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            payload_sha256="c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        ),
        IdxFile(
            "train-labels-idx1-ubyte",
            archive_sha256="a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            payload_sha256="bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        ),
        IdxFile(
            "t10k-images-idx3-ubyte",
            archive_sha256="346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            payload_sha256="5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        ),
        IdxFile(
            "t10k-labels-idx1-ubyte",
            archive_sha256="67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            payload_sha256="0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        ),
    ),
    system_dir="/usr/share/datasets/fashion-mnist",
    system_package="dataset-fashion-mnist",
)

# Archive sums and URL: TensorFlow Datasets' published url_checksums/mnist.txt (its mirror of LeCun's
# files).  Payload sums: not published by the dataset's authors; these are the values that several
# independent open-source loaders agree on.  A canonical archive passes on its archive sum alone.
MNIST = DatasetSpec(
    name="mnist",
    title="MNIST",
    base_url="https://storage.googleapis.com/cvdf-datasets/mnist/",
    files=(
        IdxFile(
            "train-images-idx3-ubyte",
            archive_sha256="440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            payload_sha256="ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        ),
        IdxFile(
            "train-labels-idx1-ubyte",
            archive_sha256="3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            payload_sha256="65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        ),
        IdxFile(
            "t10k-images-idx3-ubyte",
            archive_sha256="8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            payload_sha256="0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        ),
        IdxFile(
            "t10k-labels-idx1-ubyte",
            archive_sha256="f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            payload_sha256="ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        ),
    ),
)


def load_fashion_mnist(path=None, base_url=None):
    """Fashion-MNIST as ``(x_train, y_train), (x_test, y_test)``: uint8 ``(N, 28, 28)`` and ``(N,)``.

    ``path``: a directory to look in first.  ``base_url``: download from here instead of the canonical
    location (the files must still match the known checksums).
    """
    return load_idx_dataset(FASHION_MNIST, path=path, base_url=base_url)


def load_mnist(path=None, base_url=None):
    """MNIST as ``(x_train, y_train), (x_test, y_test)``: uint8 ``(N, 28, 28)`` and ``(N,)``.

    Arguments as for :func:`load_fashion_mnist`.  Debian packages no MNIST, so the search is ``path``,
    ``MINIDL_DATA_DIR``, the cache, then a download.
    """
    return load_idx_dataset(MNIST, path=path, base_url=base_url)


def load_idx_dataset(spec, path=None, base_url=None):
    """Find (or download), verify and parse the four files of ``spec``; see the module docstring."""
    directory = find_dataset_dir(spec, path)
    if directory is None:
        directory = download_dataset(spec, base_url or spec.base_url, path)
    train_images, train_labels, test_images, test_labels = (
        read_verified_idx(file_path(directory, idx_file), idx_file) for idx_file in spec.files
    )
    return (
        check_image_label_pair(train_images, train_labels, directory, spec.files[:2]),
        check_image_label_pair(test_images, test_labels, directory, spec.files[2:]),
    )


def user_cache_dir(spec):
    """``$XDG_CACHE_HOME/minidl/<name>``, or ``~/.cache/minidl/<name>`` when that is unset."""
    cache_root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache_root) / "minidl" / spec.name


def candidate_dirs(spec, path=None):
    """The places looked at, in order, as ``(description, directory or None)``."""
    env_dir = os.environ.get("MINIDL_DATA_DIR")
    return [
        ("path= argument", Path(path) if path is not None else None),
        ("$MINIDL_DATA_DIR", Path(env_dir) if env_dir else None),
        ("user cache", user_cache_dir(spec)),
        (f"Debian package {spec.system_package or ''}".rstrip(), Path(spec.system_dir) if spec.system_dir else None),
    ]


def file_path(directory, idx_file):
    """The gzipped file in ``directory`` if present, else the plain one, else ``None``."""
    for candidate in (Path(directory) / f"{idx_file.name}.gz", Path(directory) / idx_file.name):
        if candidate.is_file():
            return candidate
    return None


def find_dataset_dir(spec, path=None):
    """The first candidate directory that holds all four files, or ``None``."""
    for _, directory in candidate_dirs(spec, path):
        if directory is not None and all(file_path(directory, f) for f in spec.files):
            return directory
    return None


def describe_search(spec, path=None):
    """One line per place looked at, saying what was found there."""
    lines = []
    for description, directory in candidate_dirs(spec, path):
        if directory is None:
            state = "not given" if description.startswith("path") else "not set"
            if description.startswith("Debian"):
                state = f"Debian has no {spec.title} package"
            lines.append(f"  - {description}: {state}")
        elif not directory.is_dir():
            lines.append(f"  - {description}: {directory} (no such directory)")
        else:
            missing = [f.name for f in spec.files if file_path(directory, f) is None]
            lines.append(f"  - {description}: {directory} (missing {', '.join(missing)}[.gz])")
    return lines


def how_to_get(spec, base_url):
    """Instructions for putting the files on disk by hand."""
    names = ", ".join(f"{f.name}.gz" for f in spec.files)
    ways = []
    if spec.system_package:
        ways.append(f"install the Debian package: apt-get install {spec.system_package}")
    ways.append(
        f"download {names} from {base_url} into one of the directories above "
        "(or into a directory named by MINIDL_DATA_DIR)"
    )
    return ways


def download_dataset(spec, base_url, path=None):
    """Download the missing files of ``spec`` into the user cache; return the cache directory.

    Raises :class:`DatasetNotFoundError` naming every place looked at when a download fails.
    """
    searched = describe_search(spec, path)
    cache_dir = user_cache_dir(spec)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        for idx_file in spec.files:
            if file_path(cache_dir, idx_file) is None:
                download_file(f"{base_url}{idx_file.name}.gz", cache_dir / f"{idx_file.name}.gz", idx_file)
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        message = [f"{spec.title} files not found. Looked in:", *searched]
        message.append(f"Downloading from {base_url} failed: {reason}")
        message.append("To get the files, either:" if spec.system_package else "To get the files:")
        message.extend(f"  - {way}" for way in how_to_get(spec, base_url))
        raise DatasetNotFoundError("\n".join(message)) from error
    return cache_dir


def download_file(url, destination, idx_file):
    """Fetch ``url``, check its SHA-256 against ``idx_file.archive_sha256``, then move it into place.

    The bytes go to a temporary file beside ``destination`` and are renamed only once verified.
    """
    digest = hashlib.sha256()
    with atomic_write(destination) as temp_file:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                temp_file.write(chunk)
        if digest.hexdigest() != idx_file.archive_sha256:
            raise DatasetError(
                f"download of {url} failed verification: SHA-256 {digest.hexdigest()}, "
                f"expected {idx_file.archive_sha256}"
            )


def read_verified_idx(path, idx_file):
    """Read ``path`` (gzipped or plain), check it against ``idx_file``'s checksums, parse it."""
    raw = Path(path).read_bytes()
    is_archive = hashlib.sha256(raw).hexdigest() == idx_file.archive_sha256
    payload = decompress_if_gzipped(raw, path)
    if not is_archive:
        payload_digest = hashlib.sha256(payload).hexdigest()
        if payload_digest != idx_file.payload_sha256:
            raise DatasetError(
                f"{path}: checksum mismatch, the file is corrupt or not the expected {idx_file.name} "
                f"(SHA-256 of its IDX content {payload_digest}, expected {idx_file.payload_sha256}); "
                "delete it and load again to download a fresh copy"
            )
    return parse_idx(payload, source=path)


def decompress_if_gzipped(raw, source):
    """``raw`` uncompressed when it starts with the gzip magic bytes, else ``raw`` itself."""
    if not raw.startswith(GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as error:
        raise DatasetError(f"{source}: corrupt or truncated gzip stream ({error})") from error


def read_idx(path):
    """Parse the IDX file at ``path`` (gzipped or plain) into a numpy array, without checksums."""
    raw = Path(path).read_bytes()
    return parse_idx(decompress_if_gzipped(raw, path), source=path)


def parse_idx(data, source="<bytes>"):
    """Parse IDX bytes into a native-endian array of the shape the header gives.

    Raises :class:`DatasetError` naming ``source`` for a wrong magic number, an unknown type byte, a
    truncated header, or a data section that is shorter or longer than the header says.
    """
    if len(data) < 4:
        raise DatasetError(f"{source}: {len(data)} bytes is too short for an IDX header (4 bytes at least)")
    zeros, type_code, ndim = data[:2], data[2], data[3]
    if zeros != b"\x00\x00" or type_code not in IDX_DTYPES:
        raise DatasetError(
            f"{source}: bad IDX magic number 0x{data[:4].hex()}; expected 0x0000 followed by a type byte "
            f"in {{{', '.join(f'0x{code:02x}' for code in IDX_DTYPES)}}} and the number of dimensions"
        )
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DatasetError(
            f"{source}: truncated IDX header, {ndim} dimensions need {header_size} bytes, got {len(data)}"
        )
    shape = tuple(int(size) for size in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[type_code]
    expected_size = header_size + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected_size:
        problem = "truncated" if len(data) < expected_size else "has trailing bytes"
        raise DatasetError(
            f"{source}: IDX data {problem}: header says shape {shape} of {dtype.name}, "
            f"which needs {expected_size} bytes, file has {len(data)}"
        )
    values = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)
    return values.astype(dtype.newbyteorder("="))


def check_image_label_pair(images, labels, directory, idx_files):
    """Return ``(images, labels)`` after checking they are uint8 ``(N, H, W)`` and ``(N,)``."""
    images_name, labels_name = (f.name for f in idx_files)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DatasetError(
            f"{directory}/{images_name}: expected uint8 (N, H, W) images, got {images.dtype} {images.shape}"
        )
    if labels.shape != images.shape[:1] or labels.dtype != np.uint8:
        raise DatasetError(
            f"{directory}/{labels_name}: expected uint8 labels of shape ({images.shape[0]},) "
            f"to match {images_name}, got {labels.dtype} {labels.shape}"
        )
    return images, labels
