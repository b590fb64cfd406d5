"""Winograd F(2x2, 3x3) against F(4x4, 3x3), kernel by kernel, on the 3x3 convs of the benchmark suite.

    python benchmarks/winograd_tiles.py [--rounds 3] [--repeats 10]

For each conv shape, one forward and backward pass of the method's kernels on random float32 data:
the input-tile transform and its adjoint, the output transform and its adjoint, and the three
stacked GEMMs (``V @ U``, ``V^T dM``, ``dM U^T``).  The two tile sizes take turns round after round
in one process, under minidl's thread policy; each figure is the fastest of ``--repeats`` calls in
each round, the fastest round printed.  What the ``conv_algorithm`` pass weighs, in parts.
"""

import argparse

import numpy as np

import machine  # benchmarks/machine.py, beside this script
from minidl.backend import apply_process_settings
from minidl.kernels import cpu
from minidl.kernels.shapes import output_hw

#: (name, images, input side, input channels, filters, pads) of the suite's 3x3 stride-1 convs.
CONVS = [
    ("CIFAR's second conv, batch 32", 32, 32, 32, 32, ((0, 0), (0, 0))),
    ("residual's convs, batch 32", 32, 32, 32, 32, ((1, 1), (1, 1))),
    ("CIFAR's third conv, batch 32", 32, 15, 32, 64, ((1, 1), (1, 1))),
    ("seed CNN's second conv, batch 128", 128, 13, 32, 64, ((0, -1), (0, -1))),
    ("224x224 network's second conv, 16 images", 16, 111, 32, 64, ((0, -1), (0, -1))),
]

PARTS = ("tiles", "tiles_grad", "outputs", "outputs_grad", "GEMMs")


def part_calls(images, side, channels, filters, pads, tile, rng):
    """``{part: call}`` for one conv by F(tile x tile, 3x3) on random data."""
    x = rng.standard_normal((images, side, side, channels), dtype=np.float32)
    kernel = rng.standard_normal((3, 3, channels, filters), dtype=np.float32)
    out_shape = (images, *output_hw(x.shape, (3, 3), (1, 1), pads), filters)
    tiles, kernel_tiles = cpu.winograd_tiles(x, pads, tile), cpu.winograd_kernel(kernel, tile)
    products = cpu.matmul(tiles, kernel_tiles)
    grad_z = rng.standard_normal(out_shape, dtype=np.float32)
    grad_products = cpu.winograd_outputs_grad(grad_z, tile)
    grad_tiles = cpu.matmul_nt(grad_products, kernel_tiles)

    def gemms():
        cpu.matmul(tiles, kernel_tiles)
        cpu.matmul_tn(tiles, grad_products)
        cpu.matmul_nt(grad_products, kernel_tiles)

    return {"tiles": lambda: cpu.winograd_tiles(x, pads, tile),
            "tiles_grad": lambda: cpu.winograd_tiles_grad(grad_tiles, x.shape, pads),
            "outputs": lambda: cpu.winograd_outputs(products, out_shape),
            "outputs_grad": lambda: cpu.winograd_outputs_grad(grad_z, tile),
            "GEMMs": gemms}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    apply_process_settings()
    rng = np.random.default_rng(0)
    print(machine.describe())
    print("ms, fastest round of the fastest of", args.repeats, "calls; F(2x2) -> F(4x4)")
    print(f"| conv | {' | '.join(PARTS)} | total |")
    print("|---" * (len(PARTS) + 2) + "|")
    for name, *shape in CONVS:
        calls = {tile: part_calls(*shape, tile, rng) for tile in (2, 4)}
        best = {tile: dict.fromkeys(PARTS, float("inf")) for tile in calls}
        for _ in range(args.rounds):
            for tile, parts in calls.items():
                for part, call in parts.items():
                    best[tile][part] = min(best[tile][part], machine.fastest_ms(call, args.repeats))
        cells = [f"{best[2][part]:.2f} -> {best[4][part]:.2f}" for part in PARTS]
        totals = f"{sum(best[2].values()):.2f} -> {sum(best[4].values()):.2f}"
        print(f"| {name} | {' | '.join(cells)} | {totals} |")


if __name__ == "__main__":
    main()
