"""The same model trained on different backends from the same weights ends with the same weights."""

import ctypes.util
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

import minidl
from minidl import layers, training
from minidl.engine import conv_choice
from minidl.kernels import blas
from minidl.presets import seed_cnn

needs_cuda = pytest.mark.skipif(
    importlib.util.find_spec("numba_cuda") is None and importlib.util.find_spec("numba.cuda") is None,
    reason="numba-cuda is not installed (pip install -e '.[gpu]')")


def train(backend, make_model, x, y, steps, batch_size):
    minidl.set_backend(backend)
    minidl.utils.set_random_seed(0)
    model = make_model()
    model.compile(optimizer=minidl.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
                  loss="sparse_categorical_crossentropy")
    model.fit(x[:steps * batch_size], y[:steps * batch_size], batch_size=batch_size, epochs=1,
              verbose=0, seed=1)
    return model.get_weights()


@pytest.fixture(autouse=True)
def restore_backend():
    previous = minidl.get_backend()
    yield
    minidl.set_backend(previous)


def assert_same_weights(reference, other, atol):
    for expected, actual in zip(reference, other):
        np.testing.assert_allclose(actual, expected, rtol=1e-3, atol=atol)


def test_numba_and_numpy_train_the_seed_cnn_to_the_same_weights():
    rng = np.random.default_rng(0)
    x, y = rng.random((5 * 32, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, 5 * 32)
    reference = train("numpy", seed_cnn, x, y, steps=5, batch_size=32)
    assert_same_weights(reference, train("numba", seed_cnn, x, y, steps=5, batch_size=32), atol=1e-5)


@pytest.fixture
def winograd_from_one_channel(monkeypatch):
    monkeypatch.setattr(conv_choice, "WINOGRAD_MIN_CHANNELS", 1)


def tiny_cnn():
    """Every way a conv runs (with ``winograd_from_one_channel``): the first with its max pooling as one
    kernel (``conv3x3_maxpool``), the second by Winograd, the third (1x1) by im2col."""
    return minidl.Sequential([layers.Input((10, 10, 1)), layers.Conv2D(3, 3, activation="relu"), layers.MaxPooling2D(2),
                              layers.Conv2D(2, 3, activation="relu"),
                              layers.Conv2D(2, 1, activation="relu"), layers.MaxPooling2D(2),
                              layers.Flatten(), layers.Dense(3, activation="softmax")])


@needs_cuda
@pytest.mark.usefixtures("winograd_from_one_channel")
def test_cuda_and_numpy_train_to_the_same_weights():
    rng = np.random.default_rng(0)
    x, y = rng.random((8, 10, 10, 1), dtype=np.float32), rng.integers(0, 3, 8)
    reference = train("numpy", tiny_cnn, x, y, steps=2, batch_size=4)
    assert_same_weights(reference, train("cuda", tiny_cnn, x, y, steps=2, batch_size=4), atol=1e-6)


def second_cuda_step_counting_transfers(make_model, image_shape):
    """``(model, loss)`` of a second training step on the cuda backend, on 4 random images of
    ``image_shape`` already on the device, with the transfer count reset before it (the first step
    creates the optimizer's slots on the device)."""
    from minidl.kernels import cuda

    minidl.set_backend("cuda")
    model = make_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x_batch = cuda.to_device(rng.random((4, *image_shape), dtype=np.float32))
    targets = cuda.to_device(model.loss.encode_targets(rng.integers(0, 3, 4), (3,), np.float32))
    training.train_step(model, x_batch, targets)
    cuda.reset_transfer_count()
    loss, _ = training.train_step(model, x_batch, targets)
    return model, loss


@needs_cuda
def test_a_model_built_on_the_cpu_moves_its_parameters_and_state_to_the_gpu_when_the_backend_changes():
    from minidl.kernels import cuda

    minidl.set_backend("numpy")
    model = minidl.Sequential([layers.Input((6, 6, 1)), layers.Conv2D(2, 3), layers.BatchNormalization(),
                               layers.Flatten(), layers.Dense(3)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.random.default_rng(0).random((4, 6, 6, 1), dtype=np.float32)
    on_cpu = model.predict(x, verbose=0)
    minidl.set_backend("cuda")
    np.testing.assert_allclose(model.predict(x, verbose=0), on_cpu, rtol=1e-5, atol=1e-6)
    arrays = [value for layer in model.layers for value in [*layer.params.values(), *layer.state.values()]]
    assert arrays and all(cuda._is_device_array(value) for value in arrays)


@needs_cuda
@pytest.mark.usefixtures("winograd_from_one_channel")
def test_a_cuda_training_step_copies_only_the_batch_in_and_scalars_out():
    from minidl.kernels import cuda

    model, loss = second_cuda_step_counting_transfers(tiny_cnn, (10, 10, 1))
    parameter_tensors = sum(len(layer.params) for layer in model.layers)
    # the per-sample losses, and one finiteness flag per gradient; parameters never leave the device
    assert cuda.transfer_count() == 1 + parameter_tensors
    assert np.isfinite(loss)


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        minidl.set_backend("tpu")


@needs_cuda
@pytest.mark.skipif(ctypes.util.find_library("cuda") is not None, reason="this machine has a CUDA driver")
def test_cuda_without_a_gpu_or_simulator_says_what_to_do():
    script = "import minidl; minidl.set_backend('cuda')"
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert completed.returncode != 0
    assert "NUMBA_ENABLE_CUDASIM=1" in completed.stderr and "minidl[gpu]" in completed.stderr


def run_python(script, **environment):
    env = {key: value for key, value in os.environ.items() if key not in ("OMP_WAIT_POLICY", "MINIDL_NUM_THREADS")}
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                               env={**env, **environment}, check=True)
    return completed.stdout.split()


def test_importing_minidl_and_choosing_a_backend_change_no_process_setting():
    script = ("import os, minidl, minidl.kernels.cpu; minidl.set_backend('numba'); "
              "from minidl import backend; print(os.environ.get('OMP_WAIT_POLICY'), "
              "getattr(backend._settings, 'applied', False))")
    assert run_python(script) == ["None", "False"]


TRAIN_ONE_BATCH = ("import os, numba, numpy as np, minidl; from minidl import layers; from minidl.kernels import cpu; "
                   "minidl.set_backend('numba'); "
                   "m = minidl.Sequential([layers.Input((3,)), layers.Dense(2)]); m.compile('sgd', 'mse'); "
                   "m.train_on_batch(np.ones((4, 3)), np.ones((4, 2))); ")


@pytest.mark.skipif(blas.find() is None, reason="no BLAS library of minidl.kernels.blas's flavours")
def test_the_first_training_call_puts_blas_on_numbas_threads_unless_told_not_to():
    script = TRAIN_ONE_BATCH + ("from minidl.kernels import blas; print(os.environ.get('OMP_WAIT_POLICY'), "
                                "numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS, "
                                "cpu.GEMM_LIBRARY is not None, blas.find().get_num_threads())")
    assert run_python(script) == ["None", "True", "True", "1"]
    assert run_python(script, MINIDL_NUM_THREADS="1")[:3] == ["None", str(numba.config.NUMBA_NUM_THREADS == 1), "True"]
    assert run_python(script, MINIDL_PROCESS_SETTINGS="0")[2] == "False"


def test_without_a_blas_library_to_call_the_numba_kernels_run_on_one_thread_beside_blas():
    script = ("from minidl.kernels import blas; blas.find = lambda: None; " + TRAIN_ONE_BATCH +
              "print(os.environ.get('OMP_WAIT_POLICY'), numba.get_num_threads(), cpu.GEMM_LIBRARY)")
    assert run_python(script) == ["PASSIVE", "1", "None"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_freed_block_larger_than_glibcs_mmap_threshold_is_reused_without_page_faults():
    """64 MiB is past the largest mmap threshold glibc accepts (32 MiB): only a heap that maps no
    blocks keeps it, so the second array of that size touches pages it already has."""
    script = ("import resource, numpy as np; from minidl.kernels.memory import retain_freed_memory; "
              "print(retain_freed_memory()); np.ones(2**24, np.float32); "
              "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt; np.ones(2**24, np.float32); "
              "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)")
    took_effect, faults = run_python(script)
    assert took_effect == "True"
    assert int(faults) < 8


def keras_surface_cnn():
    """The layers of the Keras surface in one small network."""
    return minidl.Sequential([layers.Input((8, 8, 1)), layers.Rescaling(0.5, offset=-0.25), layers.ZeroPadding2D(1),
                              layers.Conv2D(3, 3, use_bias=False), layers.BatchNormalization(), layers.ReLU(),
                              layers.MaxPooling2D(2), layers.Conv2D(4, 3, activation="relu"),
                              layers.GlobalMaxPooling2D(keepdims=True), layers.Reshape((2, 2)), layers.Flatten(),
                              layers.BatchNormalization(center=False), layers.Dense(3, activation="softmax")])


@needs_cuda
def test_cuda_and_numpy_train_the_keras_surface_layers_to_the_same_weights_and_moving_statistics():
    rng = np.random.default_rng(0)
    x, y = rng.random((8, 8, 8, 1), dtype=np.float32), rng.integers(0, 3, 8)
    reference = train("numpy", keras_surface_cnn, x, y, steps=2, batch_size=4)
    assert_same_weights(reference, train("cuda", keras_surface_cnn, x, y, steps=2, batch_size=4), atol=1e-5)


@needs_cuda
def test_batch_normalization_keeps_its_moving_statistics_on_the_device():
    from minidl.kernels import cuda

    model, _ = second_cuda_step_counting_transfers(keras_surface_cnn, (8, 8, 1))
    assert cuda.transfer_count() == 1 + sum(len(layer.params) for layer in model.layers)


FIRST_FIT = """
import numpy as np
import minidl
from minidl import layers
minidl.set_backend("numba")
model = minidl.Sequential([layers.Input((4,)), layers.Dense(2, activation="softmax")])
model.compile("sgd", "sparse_categorical_crossentropy")
model.fit(np.zeros((8, 4), np.float32), np.zeros(8, int), epochs=1, verbose=2)
"""


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="needs Numba")
def test_a_cold_kernel_cache_is_announced_in_one_line_then_compiled_once(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache"),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    first, second = (subprocess.run([sys.executable, "-c", FIRST_FIT], env=env, capture_output=True, text=True,
                                    check=True) for _ in range(2))
    notice = first.stdout.splitlines()[0]
    assert notice.startswith("minidl: compiling kernels once, about 30 s, cached in ")
    assert str(tmp_path / "numba-cache") in notice
    assert first.stdout.splitlines()[1].startswith("Epoch 1/1 - ")
    assert "compiling kernels" not in second.stdout and second.stdout.startswith("Epoch 1/1 - ")


def test_the_kernel_cache_is_looked_at_once_per_process_not_at_every_step(backend, monkeypatch):
    from minidl import backend as backend_module

    looks = []
    monkeypatch.setattr(backend_module, "_kernels_ready_for", set())
    monkeypatch.setattr(backend_module, "numba_cache_state", lambda: looks.append(1) or (True, "cache"))
    model = minidl.Sequential([layers.Input((4,)), layers.Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    for _ in range(3):
        model.train_on_batch(np.zeros((8, 4), np.float32), np.zeros(8, int))
    model.predict(np.zeros((2, 4), np.float32))
    assert len(looks) == (1 if backend == "numba" else 0)
