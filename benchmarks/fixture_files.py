"""Writing a fixture generator's ``.npz`` files: shared by the Keras fixture scripts beside this one."""

import argparse
import pathlib

import numpy as np


def write_fixtures(description, default_out, makers, version):
    """Save each fixture of ``makers`` (name -> function returning its ``{key: array}``) as
    ``name.npz`` in the folder ``--out`` of the command line (default ``default_out``), printing each
    path with its size and ``version`` (the library that made it)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", default=default_out, type=pathlib.Path,
                        help=f"folder of the .npz files (default {default_out})")
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    for name, make in makers.items():
        path = out / f"{name}.npz"
        np.savez_compressed(path, **make())
        print(f"{path}  ({path.stat().st_size} bytes, {version})")
