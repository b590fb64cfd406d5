"""Bias + activation kernels of the Numba backend, per activation, on one float32 tensor.

    python benchmarks/activation_kernels.py [--elements 1048576] [--channels 16] [--side 32] [--repeats 20]
                                            [--threads 1]

Times ``bias_activation`` (forward) and ``activation_grad`` (backward) on ``(elements / channels,
channels)`` standard-normal values x 3 with Numba's kernels on ``--threads`` threads (default: one,
as the figures before minidl's one-pool policy were taken; that policy runs every core), and prints
the fastest call of each in milliseconds, with the memory bandwidth it implies (bytes read and written
once).  On a second line, the same values as ``side x side`` images under 2x2 average pooling: the
fused ``bias_activation_avgpool`` and ``avgpool_activation_grad``, beside ``bias_activation`` then
``avgpool_forward`` apart.  Run it with ``PYTHONPATH`` at another checkout to time that checkout's
kernels.
"""

import argparse

import numpy as np

from machine import fastest_ms  # benchmarks/machine.py, beside this script
from minidl.kernels import cpu

#: 2x2 average pooling at stride 2, unpadded: ``(pool_size, strides, pads)``
POOL = ((2, 2), (2, 2), ((0, 0), (0, 0)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=1 << 20)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    cpu.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    z = (rng.standard_normal((args.elements // args.channels, args.channels)) * 3).astype(np.float32)
    bias = rng.standard_normal(args.channels).astype(np.float32)
    for activation in ("linear", "relu", "tanh", "sigmoid"):
        y = cpu.bias_activation(z, bias, activation)
        forward = fastest_ms(lambda: cpu.bias_activation(z, bias, activation), args.repeats)
        backward = fastest_ms(lambda: cpu.activation_grad(z, y, activation), args.repeats)
        print(f"{activation:8s} bias_activation {forward:8.2f} ms ({2 * z.nbytes / forward / 1e6:5.1f} GB/s)   "
              f"activation_grad {backward:6.2f} ms ({3 * z.nbytes / backward / 1e6:5.1f} GB/s)")
        images = z.reshape(-1, args.side, args.side, args.channels)
        fused = fastest_ms(lambda: cpu.bias_activation_avgpool(images, bias, activation, *POOL), args.repeats)
        apart = fastest_ms(lambda: cpu.avgpool_forward(cpu.bias_activation(images, bias, activation), *POOL),
                           args.repeats)
        image_y, pooled = cpu.bias_activation_avgpool(images, bias, activation, *POOL)
        fused_backward = fastest_ms(lambda: cpu.avgpool_activation_grad(pooled, image_y, activation, *POOL),
                                    args.repeats)
        print(f"{'':8s} bias_activation_avgpool {fused:6.2f} ms (apart {apart:5.2f} ms)   "
              f"avgpool_activation_grad {fused_backward:6.2f} ms")


if __name__ == "__main__":
    main()
