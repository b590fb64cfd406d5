"""A data-parallel training run for ``mpiexec -n N python3 tests/distributed_program.py SCENARIO FOLDER``,
used by ``tests/test_distributed.py``.

It trains the tiny CNN on ``--samples`` synthetic images (512) for ``--epochs`` epochs (``--batch-size``
16 per rank, SGD, ``--validation-split`` held out),
saving a checkpoint in FOLDER after every epoch and the final model as ``FOLDER/final.minidl``.
SCENARIO makes rank 1 misbehave in epoch 2 (the second epoch), after its 3rd batch:

* ``none``: no fault;
* ``raise``: rank 1 raises ``RuntimeError``;
* ``kill``: rank 1 kills itself with SIGKILL;
* ``hang``: rank 1 sleeps for an hour (the others must time out, ``MINIDL_MPI_TIMEOUT``);
* ``stop``: rank 1 alone sets ``model.stop_training`` (every rank must stop after that step).

With ``--resume`` it loads ``FOLDER/checkpoint-1.minidl`` and continues from there.
"""

import argparse
import os
import signal
import sys
import time

import numpy as np

import minidl
from minidl import callbacks, presets
from minidl.distributed import DataParallel

FAULT_EPOCH, FAULT_BATCH = 1, 3


class Misbehave(callbacks.Callback):
    """Rank 1's fault at (``FAULT_EPOCH``, ``FAULT_BATCH``)."""

    def __init__(self, scenario, rank):
        self.scenario, self.rank, self.epoch = scenario, rank, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.rank != 1 or (self.epoch, batch) != (FAULT_EPOCH, FAULT_BATCH):
            return
        if self.scenario == "raise":
            raise RuntimeError("injected failure")
        if self.scenario == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if self.scenario == "hang":
            time.sleep(3600)
        if self.scenario == "stop":
            self.model.stop_training = True


def synthetic_images(samples=512, seed=0):
    """Images whose class is the quadrant with the bright blob: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, samples)
    images = rng.random((samples, 12, 12, 1), dtype=np.float32) * 0.2
    for image, label in zip(images, labels):
        row, column = divmod(int(label), 2)
        image[row * 6:row * 6 + 6, column * 6:column * 6 + 6] += 0.8
    return images, labels


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=("none", "raise", "kill", "hang", "stop"))
    parser.add_argument("folder")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16, help="per rank")
    parser.add_argument("--validation-split", type=float, default=0.0)
    args = parser.parse_args()
    strategy = DataParallel()
    minidl.utils.set_random_seed(0)
    x, y = synthetic_images(args.samples)
    if args.resume:
        model = minidl.load_model(os.path.join(args.folder, "checkpoint-1.minidl"))
    else:
        model = presets.tiny_cnn((12, 12, 1), 4)
        model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    checkpoint = callbacks.ModelCheckpoint(os.path.join(args.folder, "checkpoint-{epoch}.minidl"))
    history = model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, verbose=1, seed=5, distributed=strategy,
                        initial_epoch=model.initial_epoch, validation_split=args.validation_split,
                        callbacks=[Misbehave(args.scenario, strategy.rank), checkpoint])
    if strategy.is_chief:
        model.save(os.path.join(args.folder, "final.minidl"))
        print(f"epochs run: {history.epoch}", flush=True)
        print(f"history: {history.history}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
