"""Time one epoch of augmented Fashion-MNIST training images through DataLoader.

Augmentation: RandomFlip('horizontal') + RandomRotation(10 degrees) + RandomCrop(28, padding=2), the
60,000 training images in batches of 128.  The same run also times the loader with no augmentation (the
cost of gathering and converting batches alone), so the two figures compare on one machine.  The
consumer does nothing with the batches: this is the most the loader can deliver, to be compared with the
time a training epoch takes.

    python benchmarks/augment_throughput.py [--batch-size 128] [--repeats 3] [--prefetch 2]
"""

import argparse
import datetime
import os
import sys
import time

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minidl.data import DataLoader, load_fashion_mnist  # noqa: E402
from minidl.data import transforms as T  # noqa: E402

import machine  # noqa: E402  (benchmarks/machine.py, beside this script)


def seconds_per_epoch(loader, epoch):
    """Wall time to draw every batch of ``epoch`` from ``loader``."""
    loader.set_epoch(epoch)
    start = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - start


def best_of(loader, repeats):
    return min(seconds_per_epoch(loader, epoch) for epoch in range(repeats))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="epochs timed; the best is reported")
    parser.add_argument("--prefetch", type=int, default=2)
    args = parser.parse_args()

    (x_train, y_train), _ = load_fashion_mnist()
    augment = T.Compose([T.RandomFlip("horizontal"), T.RandomRotation(10), T.RandomCrop(28, padding=2)])
    common = dict(batch_size=args.batch_size, seed=0, prefetch=args.prefetch)
    plain_s = best_of(DataLoader(x_train, y_train, **common), args.repeats)
    augmented_s = best_of(DataLoader(x_train, y_train, transform=augment, **common), args.repeats)

    count = len(x_train)
    print(f"command: python {' '.join(sys.argv)}")
    print(f"date:    {datetime.date.today().isoformat()}")
    print(f"machine: {machine.describe()}; numpy {np.__version__}, OpenCV {cv2.__version__}")
    print(f"data:    Fashion-MNIST train, {count} images 28x28x1, batch {args.batch_size}, prefetch {args.prefetch}, "
          f"best of {args.repeats} epochs")
    print(f"augmentation: {augment!r}")
    print(f"{'loader':<28}{'s/epoch':>10}{'images/s':>12}")
    print(f"{'no augmentation':<28}{plain_s:>10.3f}{count / plain_s:>12,.0f}")
    print(f"{'flip + rotation + crop':<28}{augmented_s:>10.3f}{count / augmented_s:>12,.0f}")


if __name__ == "__main__":
    main()
