"""Time one training step of the seed CNN composed directly from kernel calls: NumPy reference vs Numba.

The step is what the layers do, without the layers: Conv2D(32, 3x3, relu) on 28x28x1 -> MaxPool 2x2 ->
Conv2D(64, 3x3, relu) -> MaxPool 2x2 -> Flatten -> Dense(64, relu) -> Dense(10) + softmax-CE, then
the backward pass and an Adam update of every parameter, float32.  The first conv's input gradient is
not computed (nothing upstream needs it).  Also reports the compile time of :func:`kernels.cpu.warmup`
in a fresh process with an empty Numba cache (cold) and again with that cache filled (cached).

Run from the repository root::

    python benchmarks/kernel_step.py [--batches 32 128] [--steps 30]
"""

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from minidl.kernels import numpy_ref  # noqa: E402
from minidl.kernels.memory import retain_freed_memory  # noqa: E402
from minidl.layers.base import window_geometry  # noqa: E402

import machine  # noqa: E402  (benchmarks/machine.py, beside this script)

EPOCH_SAMPLES = 60_000
KERNEL_SHAPES = {"W1": (3, 3, 1, 32), "W2": (3, 3, 32, 64), "W3": (5 * 5 * 64, 64), "W4": (64, 10)}


def init_params(rng):
    """He-normal weights and zero biases of the seed CNN, float32."""
    params = {}
    for index, (name, shape) in enumerate(KERNEL_SHAPES.items(), start=1):
        fan_in = int(np.prod(shape[:-1]))
        params[name] = (rng.standard_normal(shape) * np.sqrt(2 / fan_in)).astype(np.float32)
        params[f"b{index}"] = np.zeros(shape[-1], dtype=np.float32)
    return params


def conv_forward(k, x, kernel, bias):
    """im2col -> GEMM -> bias + relu; returns the output image and the cols backward needs."""
    kh, kw, c_in, c_out = kernel.shape
    pads, (out_h, out_w) = window_geometry(x.shape[1:3], (kh, kw), (1, 1), "valid")
    cols = k.im2col(x, (kh, kw), (1, 1), pads)  # (N*OH*OW, KH*KW*C_in)
    z = k.matmul(cols, kernel.reshape(-1, c_out))  # (N*OH*OW, C_out)
    y = k.bias_activation(z, bias, "relu")
    return y.reshape(x.shape[0], out_h, out_w, c_out), cols, pads


def conv_backward(k, grad_y, y, cols, kernel, x_shape, pads, need_grad_in):
    """relu grad -> weight, bias and (optionally) input gradients of one conv layer."""
    kh, kw, c_in, c_out = kernel.shape
    grad_z = k.activation_grad(grad_y.reshape(-1, c_out), y.reshape(-1, c_out), "relu")
    grad_kernel = k.matmul_tn(cols, grad_z).reshape(kernel.shape)  # (KH*KW*C_in, C_out)
    grad_bias = k.bias_grad(grad_z)
    grad_x = None
    if need_grad_in:
        grad_cols = k.matmul_nt(grad_z, kernel.reshape(-1, c_out))  # (N*OH*OW, KH*KW*C_in)
        grad_x = k.col2im(grad_cols, x_shape, (kh, kw), (1, 1), pads)
    return grad_kernel, grad_bias, grad_x


def pool_forward(k, x):
    pads, _ = window_geometry(x.shape[1:3], (2, 2), (2, 2), "valid")
    out, argmax = k.maxpool_forward(x, (2, 2), (2, 2), pads)
    return out, argmax, pads


def train_step(k, params, state, x, targets, step):
    """Forward, backward and Adam update of the seed CNN; returns the mean loss."""
    p = params
    y1, cols1, pads1 = conv_forward(k, x, p["W1"], p["b1"])  # (N, 26, 26, 32)
    q1, arg1, pool_pads1 = pool_forward(k, y1)  # (N, 13, 13, 32)
    y2, cols2, pads2 = conv_forward(k, q1, p["W2"], p["b2"])  # (N, 11, 11, 64)
    q2, arg2, pool_pads2 = pool_forward(k, y2)  # (N, 5, 5, 64)
    flat = q2.reshape(x.shape[0], -1)  # (N, 1600)
    h3 = k.bias_activation(k.matmul(flat, p["W3"]), p["b3"], "relu")  # (N, 64)
    logits = k.bias_activation(k.matmul(h3, p["W4"]), p["b4"], "linear")  # (N, 10)
    losses, grad_logits = k.softmax_cross_entropy(logits, targets)

    grads = {"W4": k.matmul_tn(h3, grad_logits), "b4": k.bias_grad(grad_logits)}
    grad_z3 = k.activation_grad(k.matmul_nt(grad_logits, p["W4"]), h3, "relu")
    grads["W3"], grads["b3"] = k.matmul_tn(flat, grad_z3), k.bias_grad(grad_z3)
    grad_q2 = k.matmul_nt(grad_z3, p["W3"]).reshape(q2.shape)
    grad_y2 = k.maxpool_backward(grad_q2, arg2, y2.shape, (2, 2), (2, 2), pool_pads2)
    grads["W2"], grads["b2"], grad_q1 = conv_backward(k, grad_y2, y2, cols2, p["W2"], q1.shape, pads2, True)
    grad_y1 = k.maxpool_backward(grad_q1, arg1, y1.shape, (2, 2), (2, 2), pool_pads1)
    grads["W1"], grads["b1"], _ = conv_backward(k, grad_y1, y1, cols1, p["W1"], x.shape, pads1, False)

    for name, param in params.items():
        m, v = state[name]
        k.adam_update(param, grads[name], m, v, 1e-3, 0.9, 0.999, 1e-7, step)
    return float(losses.mean())


def time_steps(k, batch, steps, seed=0):
    """Median milliseconds of one training step over ``steps`` steps after two warm-up steps."""
    rng = np.random.default_rng(seed)
    params = init_params(rng)
    state = {name: (np.zeros_like(w), np.zeros_like(w)) for name, w in params.items()}
    x = rng.random((batch, 28, 28, 1), dtype=np.float32)
    targets = np.eye(10, dtype=np.float32)[rng.integers(0, 10, batch)]
    times = []
    for step in range(1, steps + 3):
        start = time.perf_counter()
        train_step(k, params, state, x, targets, step)
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times[2:]))


WARMUP_SCRIPT = (
    "import sys, time; sys.path.insert(0, sys.argv[1]); start = time.perf_counter(); "
    "from minidl.kernels import cpu; import numpy as np; seconds = cpu.warmup(np.float32); "
    "print(f'{time.perf_counter() - start:.2f} {sum(seconds.values()):.2f}')"
)


def warmup_seconds(cache_dir):
    """(wall seconds of import + warmup, seconds inside warmup) in a fresh process using ``cache_dir``."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    result = subprocess.run(
        [sys.executable, "-c", WARMUP_SCRIPT, str(REPO_ROOT)], env=env, capture_output=True, text=True, check=True
    )
    total, in_warmup = result.stdout.split()
    return float(total), float(in_warmup)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--skip-numpy", action="store_true", help="time only the Numba kernels")
    parser.add_argument("--numpy-only", action="store_true", help="time only numpy_ref")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc settings alone (minidl.backend changes them)")
    parser.add_argument("--skip-compile", action="store_true", help="do not time cold/cached compiles")
    args = parser.parse_args()

    if not args.default_malloc:
        retain_freed_memory()
    backends = [] if args.skip_numpy else [("numpy_ref", numpy_ref)]
    policy = "minidl.kernels.cpu not imported"
    if not args.numpy_only:
        from minidl.kernels import cpu

        cpu.warmup(np.float32)
        backends.append(("cpu", cpu))
        policy = cpu.thread_policy()
    print(f"# {' '.join(sys.argv)}")
    print(f"# {datetime.date.today()}  {platform.node()}  {machine.describe()}, numpy {np.__version__}; {policy}")
    print(f"# malloc: {'glibc defaults' if args.default_malloc else 'freed blocks retained, as minidl sets it'}")
    print(f"{'backend':<10} {'batch':>5} {'ms/step':>9} {'s/epoch':>8}")
    for batch in args.batches:
        for name, module in backends:
            ms = time_steps(module, batch, args.steps)
            print(f"{name:<10} {batch:>5} {ms:>9.2f} {ms * EPOCH_SAMPLES / batch / 1e3:>8.1f}")
    if not (args.skip_compile or args.numpy_only):
        with tempfile.TemporaryDirectory() as cache_dir:
            for label in ("cold", "cached"):
                total, in_warmup = warmup_seconds(cache_dir)
                print(f"compile {label:<6}: import + warmup(float32) {total:.2f} s (warmup itself {in_warmup:.2f} s)")

if __name__ == "__main__":
    main()
