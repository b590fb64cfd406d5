"""Saving and loading: round trips, resumed training, and files that must be refused."""

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minidl
from minidl import layers, metrics, saving
from minidl.utils import get_rng_state, set_random_seed
from tests.archives import archive_members, write_archive


def small_model():
    model = minidl.Sequential([
        layers.Input((6, 6, 1)), layers.Conv2D(3, 3, activation="relu"), layers.MaxPooling2D(2),
        layers.Flatten(), layers.Dropout(0.25), layers.Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy",
                  metrics=["accuracy", metrics.Recall(average="weighted", name="recall_w")])
    return model


def small_data(n=32):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 6, 6, 1)).astype("float32"), np.arange(n) % 3


def weights_equal(a, b):
    return len(a) == len(b) and all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(a, b))


@pytest.fixture
def trained(tmp_path):
    set_random_seed(0)
    model, (x, y) = small_model(), small_data()
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, seed=5)
    path = tmp_path / "model.minidl"
    model.save(path)
    return model, path, x, y


# ------------------------------------------------------------------------------- round trips


def test_loaded_model_predicts_identically_and_keeps_compile_state(trained):
    model, path, x, _ = trained
    loaded = minidl.load_model(path)
    assert np.array_equal(loaded.predict(x), model.predict(x))
    assert loaded.get_config() == model.get_config()
    assert type(loaded.optimizer) is type(model.optimizer)
    assert loaded.optimizer.iterations == model.optimizer.iterations == 8
    assert loaded.metric_names[0] == "accuracy" and loaded.metric_names[1].name == "recall_w"
    assert loaded.initial_epoch == 2


def test_loaded_model_continues_training_exactly_like_the_original(trained):
    model, path, x, y = trained
    loaded = minidl.load_model(path)  # also restores the global random state of the save
    rng_state_at_save = get_rng_state()
    loaded.fit(x, y, epochs=4, initial_epoch=loaded.initial_epoch, batch_size=8, verbose=0, seed=5)
    minidl.utils.set_rng_state(rng_state_at_save)
    model.fit(x, y, epochs=4, initial_epoch=2, batch_size=8, verbose=0, seed=5)
    assert weights_equal(loaded.get_weights(), model.get_weights())


def test_weights_round_trip_and_mismatched_model_is_refused_unchanged(tmp_path, trained):
    model, _, x, _ = trained
    path = tmp_path / "model.weights"
    model.save_weights(path)
    set_random_seed(1)
    fresh = small_model()
    fresh.load_weights(path)
    assert weights_equal(fresh.get_weights(), model.get_weights())
    other = minidl.Sequential([layers.Input((6, 6, 1)), layers.Flatten(), layers.Dense(3)])
    before = other.get_weights()
    with pytest.raises(saving.ModelFileError, match="do not fit"):
        other.load_weights(path)
    assert weights_equal(other.get_weights(), before)


def test_saving_an_unbuilt_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not built"):
        minidl.Sequential([layers.Dense(2)]).save(tmp_path / "m.minidl")


def test_save_replaces_the_file_atomically_and_leaves_no_temporary(trained):
    model, path, _, _ = trained
    model.save(path)
    assert os.listdir(path.parent) == [path.name]


# ------------------------------------------------------------------------- refused files


def rewrite_with_valid_checksums(path, members):
    """Forge a file: members replaced, manifest checksums recomputed to match."""
    manifest = json.loads(members["manifest.json"])
    manifest["sha256"] = {name: hashlib.sha256(data).hexdigest()
                          for name, data in members.items() if name != "manifest.json"}
    members["manifest.json"] = json.dumps(manifest).encode()
    write_archive(path, members)


def test_truncated_file_is_refused_naming_the_file(trained):
    _, path, _, _ = trained
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(saving.ModelFileError, match=f"{path.name}.*truncated"):
        minidl.load_model(path)


def test_tampered_weight_fails_the_checksum(trained):
    _, path, _, _ = trained
    members = archive_members(path)
    weight = np.load(io.BytesIO(members["weights/0000.npy"]))
    members["weights/0000.npy"] = saving.npy_bytes(weight + 1)
    write_archive(path, members)
    with pytest.raises(saving.ModelFileError, match="checksum mismatch in 'weights/0000.npy'"):
        minidl.load_model(path)


def test_other_format_version_is_refused(trained):
    _, path, _, _ = trained
    members = archive_members(path)
    manifest = json.loads(members["manifest.json"])
    manifest["format_version"] = 99
    members["manifest.json"] = json.dumps(manifest).encode()
    write_archive(path, members)
    with pytest.raises(saving.ModelFileError, match="format version 99.*version 1"):
        minidl.load_model(path)


class CreatesFileWhenUnpickled:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_object_array_is_refused_and_never_unpickled(trained, tmp_path):
    _, path, _, _ = trained
    marker = tmp_path / "pickle-ran"
    payload = np.array([CreatesFileWhenUnpickled(str(marker))], dtype=object)
    buffer = io.BytesIO()
    np.save(buffer, payload, allow_pickle=True)
    members = archive_members(path)
    members["weights/0000.npy"] = buffer.getvalue()
    rewrite_with_valid_checksums(path, members)
    with pytest.raises(saving.ModelFileError, match="weights/0000.npy.*object arrays"):
        minidl.load_model(path)
    assert not marker.exists()


def test_non_minidl_files_are_refused(tmp_path):
    garbage, plain_npz = tmp_path / "garbage.minidl", tmp_path / "plain.npz"
    garbage.write_bytes(os.urandom(256))
    np.savez(plain_npz, a=np.zeros(3))
    with pytest.raises(saving.ModelFileError, match="garbage.minidl: not a minidl file"):
        minidl.load_model(garbage)
    with pytest.raises(saving.ModelFileError, match="plain.npz: not a minidl file"):
        minidl.load_model(plain_npz)
    with pytest.raises(FileNotFoundError, match="absent.minidl"):
        minidl.load_model(tmp_path / "absent.minidl")


def test_weights_file_and_model_file_are_not_interchangeable(trained, tmp_path):
    model, path, _, _ = trained
    weights_path = tmp_path / "w.weights"
    model.save_weights(weights_path)
    with pytest.raises(saving.ModelFileError, match="use load_weights"):
        minidl.load_model(weights_path)
    with pytest.raises(saving.ModelFileError, match="use load_model"):
        model.load_weights(path)


# ------------------------------------------------------------------- kill and resume


RESUME_SCRIPT = textwrap.dedent('''
    """mode full|killed|resume, folder: train the same seeded run (4 epochs) three ways, with the
    stateful callbacks whose state the checkpoint must carry."""
    import os, sys, time
    import numpy as np
    import minidl
    from minidl import callbacks, layers
    from minidl.utils import set_random_seed

    mode, folder = sys.argv[1], sys.argv[2]
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((48, 6, 6, 1)).astype("float32"), np.arange(48) % 3
    checkpoint = os.path.join(folder, "checkpoint.minidl")

    class HangMidEpoch(callbacks.Callback):
        """In epoch 3 (after the epoch-2 checkpoint), announce itself after 2 batches and hang."""
        def on_train_batch_end(self, batch, logs=None):
            if self.model.history.epoch[-1:] == [1] and batch == 2:
                open(os.path.join(folder, "mid-epoch"), "w").close()
                time.sleep(120)

    if mode == "resume":
        model = minidl.load_model(checkpoint)
        initial_epoch = model.initial_epoch
    else:
        set_random_seed(0)
        model = minidl.Sequential([
            layers.Input((6, 6, 1)), layers.Conv2D(4, 3, activation="relu"), layers.MaxPooling2D(2),
            layers.Flatten(), layers.Dropout(0.3), layers.Dense(3, activation="softmax")])
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        initial_epoch = 0
    extra = [HangMidEpoch()] if mode == "killed" else []
    stateful = [callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1, min_delta=0.05),
                callbacks.EarlyStopping(monitor="loss", patience=3, restore_best_weights=True),
                callbacks.ModelCheckpoint(os.path.join(folder, "best.minidl"), monitor="loss",
                                          save_best_only=True)]
    model.fit(x, y, epochs=4, initial_epoch=initial_epoch, batch_size=8, seed=7, verbose=0,
              callbacks=[callbacks.ModelCheckpoint(checkpoint), *stateful, *extra])
    model.save_weights(os.path.join(folder, mode + ".weights"))
''')


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def checkout_env():
    """The environment with this checkout first on the import path, for child processes."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([REPO_ROOT, os.environ.get("PYTHONPATH", "")])}


def run_script(script, mode, folder):
    return subprocess.run([sys.executable, str(script), mode, str(folder)], capture_output=True,
                          text=True, timeout=120, env=checkout_env())


def test_training_killed_mid_epoch_resumes_from_checkpoint_to_identical_weights(tmp_path):
    script = tmp_path / "train_script.py"
    script.write_text(RESUME_SCRIPT)
    full, interrupted = tmp_path / "full", tmp_path / "interrupted"
    full.mkdir(), interrupted.mkdir()
    completed = run_script(script, "full", full)
    assert completed.returncode == 0, completed.stderr

    process = subprocess.Popen([sys.executable, str(script), "killed", str(interrupted)],
                               stderr=subprocess.PIPE, text=True, env=checkout_env())
    deadline = time.monotonic() + 60
    while not (interrupted / "mid-epoch").exists():
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "the training script never reached epoch 3"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert minidl.load_model(interrupted / "checkpoint.minidl").initial_epoch == 2

    resumed = run_script(script, "resume", interrupted)
    assert resumed.returncode == 0, resumed.stderr
    set_random_seed(0)
    reference, result = small_resume_model(), small_resume_model()
    reference.load_weights(full / "full.weights")
    result.load_weights(interrupted / "resume.weights")
    assert weights_equal(result.get_weights(), reference.get_weights())


def small_resume_model():
    return minidl.Sequential([
        layers.Input((6, 6, 1)), layers.Conv2D(4, 3, activation="relu"), layers.MaxPooling2D(2),
        layers.Flatten(), layers.Dropout(0.3), layers.Dense(3, activation="softmax")])


def test_saved_files_get_the_permissions_a_plain_open_would_give(tmp_path):
    from minidl.utils import atomic_write

    previous = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "file.bin") as file:
            file.write(b"data")
    finally:
        os.umask(previous)
    assert (tmp_path / "file.bin").stat().st_mode & 0o777 == 0o644


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    from minidl.utils import atomic_write

    target = tmp_path / "file.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as file:
            file.write(b"half")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


# ----------------------------------------------------------- forged files with valid checksums


@pytest.fixture
def forge(trained):
    """``forge(change)``: the saved model file rewritten with ``change(members, description)`` applied
    (``description`` is model.json parsed; return False to keep model.json as ``members`` has it)
    and every checksum recomputed, so only the content checks can refuse it.  Returns the path and
    the forged bytes, to check that loading leaves the file as it was."""
    _, path, _, _ = trained

    def forged(change):
        members = archive_members(path)
        description = json.loads(members["model.json"])
        if change(members, description) is not False:
            members["model.json"] = json.dumps(description).encode()
        rewrite_with_valid_checksums(path, members)
        return path, path.read_bytes()

    return forged


def conv_config(description):
    return next(layer["config"] for layer in description["architecture"]["layers"]
                if layer["class_name"] == "Conv2D")


def npy_header_claiming(shape):
    """An .npy member whose header claims ``shape`` but that holds only 8 bytes of data."""
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + b"\0" * 8


def set_in(members, description, key, value):
    description[key] = value


FORGERIES = {
    "a conv with 10**13 filters": (
        lambda m, d: conv_config(d).update(filters=10**13),
        r"member 'weights/0000.npy' has shape \(3, 3, 1, 3\), the architecture needs \(3, 3, 1, 10000000000000\)"),
    "a huge input_shape": (
        lambda m, d: d["architecture"].update(input_shape=[10**6, 10**6, 1]),
        "input_shape' .* values per sample, more than"),
    "an .npy header claiming 10**12 values": (
        lambda m, d: m.update({"weights/0000.npy": npy_header_claiming((10**12,))}),
        r"claims shape \(1000000000000,\) of float32 \(4,000,000,000,000 bytes\) but holds 8 bytes"),
    "JSON nested 100,000 deep": (
        lambda m, d: (m.update({"model.json": b"[" * 100_000 + b"]" * 100_000}), False)[1],
        "member 'model.json' is nested too deeply"),
    "a layer dtype int8": (
        lambda m, d: conv_config(d).update(dtype="int8"),
        r"dtype must be one of \('float32', 'float64'\), got 'int8'"),
    "a layer dtype object": (
        lambda m, d: conv_config(d).update(dtype="object"),
        r"dtype must be one of \('float32', 'float64'\), got 'object'"),
    "int8 weights": (
        lambda m, d: m.update({"weights/0000.npy": saving.npy_bytes(np.zeros((3, 3, 1, 3), np.int8))}),
        "member 'weights/0000.npy' has dtype int8, expected a float array"),
    "class_names=5": (
        lambda m, d: set_in(m, d, "class_names", 5),
        "class_names must be a list of 3 strings .*got 5"),
    "two class names for three outputs": (
        lambda m, d: set_in(m, d, "class_names", ["a", "b"]),
        "class_names must be a list of 3 strings"),
    "an infinite learning rate": (
        lambda m, d: d["compile"]["optimizer"]["config"].update(learning_rate=float("inf")),
        "Adam: learning_rate must be finite"),
    "an optimizer slot of another shape": (
        lambda m, d: m.update({"optimizer/0000/m.npy": saving.npy_bytes(np.zeros(7, np.float32))}),
        r"member 'optimizer/0000/m.npy' has shape \(7,\), its parameter \(3, 3, 1, 3\)"),
    "a negative epoch": (
        lambda m, d: d["training"].update(epoch=-1),
        "the finished epoch count must be a non-negative int, got -1"),
    "a weight count that does not match": (
        lambda m, d: set_in(m, d, "weight_count", 10**9),
        "the file holds 1000000000 weight arrays, its architecture has 4"),
    "a random state that is not one": (
        lambda m, d: d["training"].update(rng_state={"bit_generator": "MT19937", "state": 5}),
        "rng_state is not a random generator state"),
    "an architecture without layers": (
        lambda m, d: d["architecture"].pop("layers"),
        "the architecture has no 'layers'"),
}


@pytest.mark.parametrize("forgery", FORGERIES)
def test_a_forged_file_with_valid_checksums_is_refused_naming_the_problem_without_big_allocations(
        forge, forgery):
    import tracemalloc

    change, message = FORGERIES[forgery]
    path, forged_bytes = forge(change)
    rng_state = get_rng_state()
    tracemalloc.start()
    try:
        with pytest.raises(saving.ModelFileError, match=f"{path.name}: .*{message}"):
            minidl.load_model(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20, f"loading took {peak / 2**20:.0f} MiB"
    assert path.read_bytes() == forged_bytes and get_rng_state() == rng_state


def test_compressed_or_extra_members_are_refused_before_they_are_read(trained):
    import tracemalloc

    _, path, _, _ = trained
    members = archive_members(path)
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("padding.bin", b"\0" * (64 * 2**20))  # 64 MiB that compress to 64 kB
    assert path.stat().st_size < 2**20
    tracemalloc.start()
    try:
        with pytest.raises(saving.ModelFileError, match="member 'padding.bin' is compressed"):
            minidl.load_model(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20
    members["extra.npy"] = saving.npy_bytes(np.zeros(4, np.float32))
    write_archive(path, members)
    with pytest.raises(saving.ModelFileError, match=r"unexpected \['extra.npy'\]"):
        minidl.load_model(path)


@given(position=st.integers(0, 10**9), flip=st.integers(1, 255))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_file_with_any_byte_flipped_is_refused_or_loads_the_same_weights(trained, position, flip):
    model, path, _, _ = trained
    data = bytearray(path.read_bytes())
    data[position % len(data)] ^= flip
    flipped = path.with_name("flipped.minidl")
    flipped.write_bytes(bytes(data))
    try:
        loaded = minidl.load_model(flipped)
    except saving.ModelFileError:
        return
    assert weights_equal(loaded.get_weights(), model.get_weights())


@given(length=st.integers(0, 10**9))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_file_cut_short_anywhere_is_refused(trained, length):
    _, path, _, _ = trained
    data = path.read_bytes()
    cut = path.with_name("cut.minidl")
    cut.write_bytes(data[:length % len(data)])
    with pytest.raises(saving.ModelFileError):
        minidl.load_model(cut)


def test_loading_leaves_the_global_random_generator_alone(trained):
    _, path, _, _ = trained
    set_random_seed(123)
    expected = np.random.default_rng(123).integers(2**31, size=3)
    minidl.load_model(path)
    assert np.array_equal(minidl.utils.global_rng().integers(2**31, size=3), expected)


# ------------------------------------------------------------------- every layer of the Keras surface

NEW_LAYERS = [
    lambda: layers.Rescaling(1 / 255, offset=0.1),
    lambda: layers.ZeroPadding2D(((0, 1), (2, 1))),
    lambda: layers.Conv2D(3, 3, use_bias=False),
    lambda: layers.BatchNormalization(momentum=0.8, epsilon=1e-2, center=False),
    lambda: layers.GlobalMaxPooling2D(keepdims=True),
    lambda: layers.Reshape((-1,)),
    lambda: layers.GlobalAveragePooling2D(),
    lambda: layers.Dense(3, use_bias=False),
]


@pytest.mark.parametrize("index", range(len(NEW_LAYERS)))
def test_every_new_layer_rebuilds_from_its_config(index):
    layer = NEW_LAYERS[index]()
    rebuilt = layers.deserialize(json.loads(json.dumps(layers.serialize(layer))))
    assert type(rebuilt) is type(layer) and rebuilt.get_config() == layer.get_config()


def test_a_model_with_every_new_layer_round_trips_with_identical_predictions_and_moving_statistics(tmp_path):
    set_random_seed(1)
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 255, (16, 6, 6, 2)).astype("float32"), np.arange(16) % 3
    for make_block in ([NEW_LAYERS[i] for i in (0, 1, 2, 3, 4)], [NEW_LAYERS[i] for i in (0, 3, 6, 7)]):
        model = minidl.Sequential([layers.Input((6, 6, 2)), *(make() for make in make_block),
                                   layers.Flatten(), layers.Dense(3, activation="softmax")])
        model.compile("sgd", "sparse_categorical_crossentropy")
        model.fit(x, y, epochs=1, batch_size=8, verbose=0)
        bn = next(layer for layer in model.layers if isinstance(layer, layers.BatchNormalization))
        assert not np.array_equal(bn.get_weights()[-1], np.ones(2))  # the moving variance was trained
        model.save(tmp_path / "model.minidl")
        loaded = minidl.load_model(tmp_path / "model.minidl")
        assert weights_equal(loaded.get_weights(), model.get_weights())
        assert np.array_equal(loaded.predict(x), model.predict(x))
        assert loaded.get_config() == model.get_config()
