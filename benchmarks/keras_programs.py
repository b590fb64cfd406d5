"""The Keras programs of ``tests/keras_programs/`` under Keras as written and under minidl with only
their imports changed: test accuracy and peak memory of each, side by side.

    pip install -e ".[bench]"        # or give --keras-python a Python that has Keras and TensorFlow
    python benchmarks/keras_programs.py [--keras-python PATH] [--programs NAME ...]

Each program runs in a fresh process per framework (Keras first, then minidl), seeded as the program
seeds itself (Keras 3 refuses the Keras 2 spelling ``lr=`` that the seed's program uses, so Keras
runs it as ``learning_rate=``; minidl runs it as written); the peak resident memory is the
process's ``VmHWM`` read at its end (``machine.peak_rss_mib``).  Keras's
``datasets.fashion_mnist.load_data()`` reads ``~/.keras/datasets/fashion-mnist/``: copy the IDX files
there (e.g. from ``/usr/share/datasets/fashion-mnist``) on a machine without internet access.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import machine  # benchmarks/machine.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = ROOT / "tests" / "keras_programs"

RUNNER = """
import json, re, sys
source = open(sys.argv[1]).read()
if sys.argv[2] == "keras":
    source = re.sub(r"\\blr=", "learning_rate=", source)
if sys.argv[2] == "minidl":
    sys.path.insert(0, sys.argv[3])
    from tests.keras_programs.test_keras_programs import port
    import minidl
    minidl.utils.set_random_seed(0)
    source = port(source)
exec(compile(source, sys.argv[1], "exec"), {"__name__": "__main__"})
sys.path.insert(0, sys.argv[4])
import machine
print("PEAK_MIB", machine.peak_rss_mib())
"""


def run(program, framework, python):
    """``(test accuracy, peak MiB)`` of ``program`` run by ``python`` under ``framework``."""
    with tempfile.TemporaryDirectory() as folder:
        result = subprocess.run([python, "-c", RUNNER, str(program), framework, str(ROOT),
                                 str(Path(__file__).resolve().parent)], cwd=folder,
                                capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if result.returncode != 0:
        raise RuntimeError(f"{program.name} under {framework} failed:\n{result.stderr[-3000:]}")
    accuracy = float(re.search(r"test accuracy: ([0-9.]+)", result.stdout).group(1))
    return accuracy, float(re.search(r"PEAK_MIB ([0-9.]+)", result.stdout).group(1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keras-python", default=sys.executable,
                        help="a Python with keras and tensorflow installed (default: this one)")
    parser.add_argument("--programs", nargs="*",
                        default=sorted(p.stem for p in PROGRAMS.glob("*.py") if not p.stem.startswith(("test_", "__"))))
    args = parser.parse_args()
    print(machine.describe())
    rows = []
    for name in args.programs:
        program = PROGRAMS / f"{name}.py"
        keras_accuracy, keras_mib = run(program, "keras", args.keras_python)
        minidl_accuracy, minidl_mib = run(program, "minidl", sys.executable)
        rows.append({"program": name, "keras_accuracy": keras_accuracy, "minidl_accuracy": minidl_accuracy,
                     "keras_peak_mib": round(keras_mib), "minidl_peak_mib": round(minidl_mib)})
        print(json.dumps(rows[-1]), flush=True)
    print("| program | Keras accuracy | minidl accuracy | Keras peak MiB | minidl peak MiB |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['program']} | {row['keras_accuracy']:.4f} | {row['minidl_accuracy']:.4f} | "
              f"{row['keras_peak_mib']} | {row['minidl_peak_mib']} |")


if __name__ == "__main__":
    main()
