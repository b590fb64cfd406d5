"""glibc's malloc settings against each other on the suite's networks, in alternating fresh processes.

    python benchmarks/malloc_ab.py [--networks cifar_cnn residual ...] [--batch-sizes 32 128]
                                   [--rounds 3] [--steps 10]

A malloc setting cannot be undone inside a process (blocks already in the heap stay there), so every
measurement is a fresh worker process, the settings taking turns round after round.  Each worker
applies one setting before its model allocates anything, then trains one random batch ``--steps``
times and reports its fastest and median step, the page faults per step and its peak RSS:

* ``glibc``: glibc's defaults (blocks over an adaptive threshold of 128 KiB to 32 MiB are mapped
  afresh and unmapped when freed);
* ``threshold``: mapped blocks only from 32 MiB, the largest threshold glibc accepts (minidl's
  setting until 2026-12-06);
* ``heap``: no mapped blocks at all, :func:`minidl.kernels.memory.retain_freed_memory` ([P1]).

The Numba/BLAS thread policy is minidl's in every worker.  Prints per network and batch size the
fastest step over all rounds, the median of the workers' medians, faults per step and peak RSS.
"""

import argparse
import ctypes
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

import machine  # benchmarks/machine.py, beside this script
import suite  # benchmarks/suite.py, beside this script

SETTINGS = ("glibc", "threshold", "heap")


def apply_setting(setting):
    """Set glibc's malloc as ``setting`` (see the module's docstring) and minidl's thread policy."""
    from minidl.kernels import cpu, memory

    if setting == "heap":
        memory.retain_freed_memory()
    elif setting == "threshold":
        mallopt = ctypes.CDLL(None).mallopt
        mallopt(-3, 32 * 2**20)  # M_MMAP_THRESHOLD
        mallopt(memory.M_TRIM_THRESHOLD, memory.HEAP_TRIM_THRESHOLD)
    cpu.apply_thread_policy()


def run_worker(setting, network, batch_size, steps):
    """Train ``network`` on one random batch under ``setting``; print the measurements as JSON."""
    apply_setting(setting)
    import minidl

    model = suite.compiled(minidl, network)
    rng = np.random.default_rng(0)
    x = rng.random((batch_size, *suite.NETWORKS[network][2]), dtype=np.float32)
    y = rng.integers(0, suite.CLASSES, batch_size)
    for _ in range(2):
        model.train_on_batch(x, y)  # compiles, plans, and fills the heap
    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        seconds.append(time.perf_counter() - start)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before
    print("RESULT " + json.dumps({"min_s": min(seconds), "median_s": statistics.median(seconds),
                                  "faults_per_step": faults / steps, "peak_rss_mib": machine.peak_rss_mib()}))


def launch_worker(setting, network, batch_size, steps):
    command = [sys.executable, __file__, "--worker", setting, "--networks", network,
               "--batch-sizes", str(batch_size), "--steps", str(steps)]
    env = {**os.environ, "MINIDL_PROCESS_SETTINGS": "0"}  # the worker applies its own
    completed = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    line = next(line for line in completed.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", choices=list(suite.NETWORKS),
                        default=["seed_cnn", "cifar_cnn", "residual", "seed_224"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per worker")
    parser.add_argument("--worker", choices=SETTINGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args.worker, args.networks[0], args.batch_sizes[0], args.steps)
        return
    print(machine.describe())
    for network, batch_size in itertools.product(args.networks, args.batch_sizes):
        results = {setting: [] for setting in SETTINGS}
        for round_index in range(args.rounds):
            order = SETTINGS[round_index % len(SETTINGS):] + SETTINGS[:round_index % len(SETTINGS)]
            for setting in order:
                results[setting].append(launch_worker(setting, network, batch_size, args.steps))
        cells = []
        for setting, runs in results.items():
            cells.append(f"{setting}: min {min(r['min_s'] for r in runs) * 1e3:.1f} median "
                         f"{statistics.median(r['median_s'] for r in runs) * 1e3:.1f} ms, "
                         f"{statistics.median(r['faults_per_step'] for r in runs):.0f} faults/step, "
                         f"peak {max(r['peak_rss_mib'] for r in runs):.0f} MiB")
        print(f"{network} batch {batch_size}: " + "; ".join(cells), flush=True)


if __name__ == "__main__":
    main()
