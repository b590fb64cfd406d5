"""Data-parallel training steps of the seed CNN over MPI: throughput, bytes reduced, allreduce time,
and the communication overhead with and without overlapping the reduction with backward.

Run under MPI, one thread per rank, from the repository root::

    OPENBLAS_NUM_THREADS=1 MINIDL_NUM_THREADS=1 mpiexec -n 1 python3 benchmarks/distributed_step.py
    OPENBLAS_NUM_THREADS=1 MINIDL_NUM_THREADS=1 mpiexec -n 2 python3 benchmarks/distributed_step.py

Each rank trains on its own random batch of ``--batch-size`` 28x28x1 images (per rank) with SGD.
For each of ``--repeats`` rounds it times ``--steps`` steps of each mode, the modes taking turns
every 5 steps (so that a change in a shared machine's load hits them alike):

* ``plain``: ``minidl.training.train_step``, no communication at all (the compute of one step);
* ``barrier``: the same and an ``MPI_Barrier``: what waiting for the slowest rank costs each step,
  with no data moved (on a loaded machine, ranks are descheduled at different times);
* ``overlap``: :class:`minidl.distributed.DataParallel`, each bucket's ``Iallreduce`` started in backward;
* ``after``: the same with ``overlap=False``, every bucket reduced after the whole backward;

and the blocking ``Allreduce`` of the same bucket buffers alone, with no training around it.
Rank 0 prints one line per round and mode: the median and mean ms per step, images/s over all
ranks at the median, the time a step waits for the reduction (in ``GradientBuckets.finish``: the
communication backward did not hide, and any wait for a slower rank) and the overhead against
``plain``.  Then the ring-allreduce prediction ``2 (N-1)/N x bytes / bandwidth`` for ``--predict``
machines at 10 and 100 Gbit/s, against the compute time of a ``plain`` step here.
"""

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

import minidl  # noqa: E402
from minidl import training  # noqa: E402
from minidl.backend import ops  # noqa: E402
from minidl.distributed import DataParallel, mpi  # noqa: E402

import machine  # noqa: E402

#: the modes alternate every this many steps, so a change in the machine's load hits them alike
BLOCK_STEPS = 5


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=128, help="per rank (default 128)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per mode and round (default 30)")
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of every mode (default 3)")
    parser.add_argument("--bucket-kib", type=int, default=64, help="gradient bucket size (default 64 KiB)")
    parser.add_argument("--predict", type=int, nargs="+", default=[8, 64], help="machines to predict for")
    return parser.parse_args()


def timed_steps(step, steps, comm, strategy):
    """Per-step seconds of ``steps`` steps and, with a ``strategy``, the seconds of each spent
    waiting for the reduction; every rank starts together."""
    durations, waits = [], []
    comm.Barrier()
    for _ in range(steps):
        waited_before = strategy.stats["wait_seconds"] if strategy else 0.0
        started = time.perf_counter()
        step()
        durations.append(time.perf_counter() - started)
        waits.append(strategy.stats["wait_seconds"] - waited_before if strategy else 0.0)
    return np.array(durations), np.array(waits)


def allreduce_seconds(buffers, repeats, comm):
    """Seconds of each of ``repeats`` blocking ``Allreduce`` rounds over every buffer in turn."""
    durations = []
    comm.Barrier()
    for _ in range(repeats):
        started = time.perf_counter()
        for buffer in buffers:
            comm.Allreduce(mpi().IN_PLACE, buffer)
        durations.append(time.perf_counter() - started)
    return np.array(durations)


def main():
    args = parse_arguments()
    comm = mpi().COMM_WORLD
    rank, ranks = comm.Get_rank(), comm.Get_size()
    minidl.utils.set_random_seed(rank)
    rng = np.random.default_rng(rank)
    x = ops.to_device(rng.random((args.batch_size, 28, 28, 1), dtype=np.float32))
    model = minidl.presets.seed_cnn()
    model.compile("sgd", "sparse_categorical_crossentropy")
    targets = ops.to_device(model.loss.encode_targets(rng.integers(0, 10, args.batch_size), (10,), np.float32))
    training.prepare(model)
    strategies = {"overlap": DataParallel(bucket_bytes=args.bucket_kib * 1024, overlap=True),
                  "after": DataParallel(bucket_bytes=args.bucket_kib * 1024, overlap=False)}
    for strategy in strategies.values():
        strategy.start(model)
    steps = {"plain": lambda: training.train_step(model, x, targets),
             "barrier": lambda: (training.train_step(model, x, targets), comm.Barrier()),
             **{mode: (lambda s=s: s.train_step(model, x, targets)) for mode, s in strategies.items()}}
    for step in steps.values():
        for _ in range(args.warmup_steps):
            step()
    buckets = strategies["overlap"].buckets
    if rank == 0:
        print(f"{datetime.date.today()}, {machine.describe()}, MPI: {mpi().Get_library_version().splitlines()[0]}")
        print(f"{ranks} rank(s), seed CNN, batch {args.batch_size} per rank, SGD, numba backend "
              f"({os.environ.get('MINIDL_NUM_THREADS', '1')} Numba thread, OPENBLAS_NUM_THREADS="
              f"{os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}); {len(buckets.buckets)} buckets of "
              f"{[bucket.buffer.nbytes for bucket in buckets.buckets]} bytes, {buckets.nbytes} bytes reduced per step")
    plain_seconds = []
    for round_index in range(args.repeats):
        durations = {mode: [] for mode in steps}
        waits = {mode: [] for mode in steps}
        for _ in range(-(-args.steps // BLOCK_STEPS)):  # the modes alternate in short blocks
            for mode, step in steps.items():
                block_durations, block_waits = timed_steps(step, BLOCK_STEPS, comm, strategies.get(mode))
                durations[mode] += list(block_durations)
                waits[mode] += list(block_waits)
        median = {mode: float(np.median(values)) for mode, values in durations.items()}
        for mode in steps:
            if rank == 0:
                print(f"round {round_index + 1} {mode:>7}: median {median[mode] * 1e3:6.1f} ms/step (mean "
                      f"{np.mean(durations[mode]) * 1e3:6.1f}), {ranks * args.batch_size / median[mode]:6.0f} "
                      f"images/s, waiting for the reduction median {np.median(waits[mode]) * 1e3:5.2f} ms/step "
                      f"(mean {np.mean(waits[mode]) * 1e3:5.2f}), overhead vs plain "
                      f"{(median[mode] / median['plain'] - 1) * 100:+5.1f}%", flush=True)
        plain_seconds.append(median["plain"])
        reduce_seconds = allreduce_seconds([bucket.buffer for bucket in buckets.buckets], args.steps, comm)
        if rank == 0:
            print(f"round {round_index + 1} Allreduce of the {len(buckets.buckets)} buckets alone: median "
                  f"{np.median(reduce_seconds) * 1e3:.3f} ms, fastest {reduce_seconds.min() * 1e3:.3f} ms", flush=True)
    if rank == 0:
        compute = min(plain_seconds)
        print(f"prediction, ring allreduce 2(N-1)/N x {buckets.nbytes} bytes / bandwidth, no overlap, latency "
              f"ignored, against the fastest round's median plain step here ({compute * 1e3:.1f} ms):")
        for machines in args.predict:
            for gbit in (10, 100):
                comm_seconds = 2 * (machines - 1) / machines * buckets.nbytes * 8 / (gbit * 1e9)
                print(f"  {machines:3d} machines, {gbit:3d} Gbit/s: {comm_seconds * 1e3:6.3f} ms a step, "
                      f"efficiency {compute / (compute + comm_seconds) * 100:5.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
