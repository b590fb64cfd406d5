"""The hand-written tiled GEMM of ``kernels/cuda.py`` against cuBLAS (through CuPy) on a GPU.

The shapes are the seed CNN's convolution GEMMs (Conv32 3x3 - Pool 2 - Conv64 3x3 on 28x28x1), at a
batch of 128 by default.  For a conv layer with ``R = N*OH*OW`` im2col rows, ``K = KH*KW*C_in`` and
``C = C_out``, one training step runs three products::

    forward     cols @ W          matmul     (R, K) @ (K, C)      -> (R, C)
    grad W      cols.T @ g        matmul_tn  (R, K)^T @ (R, C)    -> (K, C)
    grad cols   g @ W.T           matmul_nt  (R, C) @ (K, C)^T    -> (R, K)

Each is timed through the public ``kernels.cuda`` functions (as a layer calls them, output
allocation included), once with the numba GEMM and once with ``set_gemm("cublas")``, after one
warm-up call; it reports ``2*M*N*K / seconds`` as GFLOP/s and hand-written / cuBLAS as the ratio,
and checks that both engines give the same product.

Usage::

    python benchmarks/gpu_gemm.py [--batch 128] [--repeats 20] [--out results.md]
    python benchmarks/gpu_gemm.py --sizes 1000x27x16,500x144x32     # conv layers given as RxKxC
    NUMBA_ENABLE_CUDASIM=1 python benchmarks/gpu_gemm.py --dry-run  # check the script, no timing value

On the CUDA simulator the figures mean nothing, so the script refuses to run there without
``--dry-run``, which uses tiny shapes and says that its numbers are not measurements.
"""

import argparse
import datetime
import importlib.util
import platform
import sys
import time

import numpy as np

from minidl.kernels import cuda as gpu
from minidl.kernels.shapes import output_length

import machine  # benchmarks/machine.py, beside this script

DRY_RUN_SIZES = "20x9x8,6x18x5"


def seed_cnn_layers(batch):
    """``{name: (R, K, C)}`` for the seed CNN's two convolutions at ``batch`` images."""
    conv1_hw = output_length(28, 3, 1, 0, 0)  # 26
    conv2_hw = output_length(output_length(conv1_hw, 2, 2, 0, 0), 3, 1, 0, 0)  # 13 after pooling, then 11
    return {
        "conv1": (batch * conv1_hw * conv1_hw, 3 * 3 * 1, 32),
        "conv2": (batch * conv2_hw * conv2_hw, 3 * 3 * 32, 64),
    }


def parse_sizes(text):
    """``"RxKxC,RxKxC"`` -> ``{"layer1": (R, K, C), ...}``."""
    layers = {}
    for number, triple in enumerate(text.split(","), start=1):
        parts = triple.lower().split("x")
        if len(parts) != 3 or not all(part.isdigit() and int(part) > 0 for part in parts):
            raise SystemExit(f"gpu_gemm: --sizes wants positive RxKxC triples, got {triple!r}")
        layers[f"layer{number}"] = tuple(int(part) for part in parts)
    return layers


def products(rows, depth, channels):
    """The three GEMMs of one conv layer: ``(label, function name, a shape, b shape, (M, K, N))``."""
    return [
        ("forward   cols @ W", "matmul", (rows, depth), (depth, channels), (rows, depth, channels)),
        ("grad W    cols.T @ g", "matmul_tn", (rows, depth), (rows, channels), (depth, rows, channels)),
        ("grad cols g @ W.T", "matmul_nt", (rows, channels), (depth, channels), (rows, channels, depth)),
    ]


def seconds_per_call(product, a, b, repeats):
    """Mean wall time of ``product(a, b)`` over ``repeats`` calls, after one warm-up (JIT) call."""
    product(a, b)
    gpu.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        product(a, b)
    gpu.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def time_engine(engine, function_name, a, b, repeats):
    """``(seconds per call, product on the host)`` with the GEMM engine ``engine``."""
    gpu.set_gemm(engine)
    product = getattr(gpu, function_name)
    return seconds_per_call(product, a, b, repeats), gpu.to_host(product(a, b))


def device_description():
    if gpu.ON_SIMULATOR:
        return "Numba CUDA simulator (no GPU)"
    name = gpu.cuda.get_current_device().name
    return name.decode() if isinstance(name, bytes) else name


def run(layers, repeats, with_cublas):
    """Time every product of every layer; return the table rows as lists of strings."""
    rng = np.random.default_rng(0)
    table = []
    for layer, (rows, depth, channels) in layers.items():
        for label, function_name, a_shape, b_shape, (m, k, n) in products(rows, depth, channels):
            a = gpu.to_device(rng.standard_normal(a_shape, dtype=np.float32))
            b = gpu.to_device(rng.standard_normal(b_shape, dtype=np.float32))
            flop = 2.0 * m * n * k
            numba_seconds, numba_product = time_engine("numba", function_name, a, b, repeats)
            row = [layer, label, f"{m}x{k}x{n}", f"{flop / numba_seconds / 1e9:.1f}"]
            if with_cublas:
                cublas_seconds, cublas_product = time_engine("cublas", function_name, a, b, repeats)
                error = np.abs(numba_product - cublas_product).max() / max(np.abs(cublas_product).max(), 1e-30)
                row += [f"{flop / cublas_seconds / 1e9:.1f}", f"{cublas_seconds / numba_seconds:.3f}", f"{error:.1e}"]
            else:
                row += ["n/a", "n/a", "n/a"]
            table.append(row)
    gpu.set_gemm("numba")
    return table


def markdown(table, header_lines):
    columns = ["layer", "product", "M x K x N", "numba GFLOP/s", "cuBLAS GFLOP/s", "numba / cuBLAS",
               "max rel. diff"]
    lines = list(header_lines) + ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in table]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128, help="images per batch (default 128)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per product (default 20)")
    parser.add_argument("--sizes", help="conv layers as RxKxC[,RxKxC...] instead of the seed CNN's")
    parser.add_argument("--dry-run", action="store_true",
                        help=f"tiny shapes ({DRY_RUN_SIZES}), 2 repeats; allowed on the simulator")
    parser.add_argument("--out", help="also write the markdown table to this file")
    args = parser.parse_args(argv)

    if gpu.ON_SIMULATOR and not args.dry_run:
        raise SystemExit(
            "gpu_gemm: refusing to benchmark on the CUDA simulator (NUMBA_ENABLE_CUDASIM=1): its timings "
            "measure Python threads, not a GPU. Run on a machine with an NVIDIA GPU, or pass --dry-run."
        )
    try:
        gpu.check_available()
    except RuntimeError as error:
        raise SystemExit(f"gpu_gemm: {error}") from error
    if args.dry_run:
        layers, repeats = parse_sizes(args.sizes or DRY_RUN_SIZES), 2
    else:
        layers, repeats = (parse_sizes(args.sizes) if args.sizes else seed_cnn_layers(args.batch)), args.repeats
    with_cublas = importlib.util.find_spec("cupy") is not None
    table = run(layers, repeats, with_cublas)

    header = [
        f"command: python {' '.join(sys.argv)}",
        f"device: {device_description()}; host: {platform.node()}, {machine.describe()}",
        f"date: {datetime.date.today().isoformat()}; float32; {repeats} timed calls per product after 1 warm-up",
    ]
    if args.dry_run:
        header.append("DRY RUN: tiny shapes, figures are not measurements")
    if not with_cublas:
        header.append("cuBLAS: CuPy is not installed (pip install cupy-cuda12x or cupy-cuda13x), no comparison")
    report = markdown(table, header)
    print(report)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(report)


if __name__ == "__main__":
    main()
