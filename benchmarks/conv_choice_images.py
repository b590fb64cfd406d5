"""What the conv choice would see on more or fewer images: each conv's candidates timed per image.

    python benchmarks/conv_choice_images.py [--network strided_tanh ...] [--images 16 32 64 128]
                                            [--inference]

For every conv in the plan of each ``--network`` (the benchmark suite's, ``benchmarks/suite.py``)
with more than one candidate method, times every candidate as the conv choice does
(``minidl.engine.conv_choice.measured_seconds``: a forward and backward pass, the candidates taking
turns, the fastest of its repeats) on each number of ``--images`` (fewer where the choice's scratch
bound allows fewer), and prints microseconds per image and the seconds the timing took (what one
choice costs a first plan; a new choice is timed again at the next plan).  A method whose cost per
image grows with the images is one whose scratch for them passes a cache; where a choice between two
methods changes with the images, the number of images the choice times decides it.  ``--inference``
times forward passes alone in the plan's inference chunks, as the inference choice does.  Nothing is
cached.
"""

import argparse
import os
import time

import minidl
from minidl.backend import apply_process_settings
from minidl.engine import conv_choice
from minidl.engine.conv_methods import candidate_methods
from minidl.engine.passes import INFERENCE_WORKSPACE_BYTES

import machine  # benchmarks/machine.py, beside this script
from suite import NETWORKS, compiled  # benchmarks/suite.py, beside this script


def convs_of(network):
    """``[(conv, its pads, input gradient needed)]`` of every conv of suite network ``network``'s plan
    (planned by the cost model, so that planning times nothing)."""
    os.environ["MINIDL_CONV_CHOICE"] = "model"
    plan = compiled(minidl, network).plan
    return [(step.conv, step.linear.pads, step.input_grad_needed) for step in plan.steps if hasattr(step, "linear")]


def per_image_microseconds(conv, pads, input_grad_needed, images, inference_bytes):
    """``(images timed, {method: us per image}, seconds the timing took)`` as the conv choice times
    them (the last is what one choice costs a first plan)."""
    methods = candidate_methods(conv)
    timed = conv_choice.images_to_time(conv, methods, pads, images)
    start = time.perf_counter()
    seconds = conv_choice.measured_seconds(conv, methods, pads, input_grad_needed, timed, inference_bytes)
    took = time.perf_counter() - start
    return timed, {name: taken / timed * 1e6 for name, taken in seconds.items()}, took


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", nargs="+", default=["strided_tanh"], choices=sorted(NETWORKS))
    parser.add_argument("--images", nargs="+", type=int, default=[16, 32, 64, 128])
    parser.add_argument("--inference", action="store_true", help="forward passes alone, in inference chunks")
    args = parser.parse_args()
    apply_process_settings()
    print(machine.describe())
    inference_bytes = INFERENCE_WORKSPACE_BYTES if args.inference else None
    for network in args.network:
        for conv, pads, input_grad_needed in convs_of(network):
            if len(candidate_methods(conv)) < 2:
                continue
            (kh, kw), (sh, sw) = conv.kernel_size, conv.strides
            print(f"{network} {conv.name}: {'x'.join(map(str, conv.input_shape))} -> {conv.filters}, "
                  f"{kh}x{kw} at stride {sh}x{sw}{'' if input_grad_needed else ', no input gradient'}, us per image")
            for images in args.images:
                timed, microseconds, took = per_image_microseconds(conv, pads, input_grad_needed, images,
                                                                   inference_bytes)
                fastest = min(microseconds.values())
                cells = ", ".join(f"{name} {us:.0f}{'*' if us == fastest else ''}" for name, us in microseconds.items())
                print(f"    {timed:4d} images: {cells}   (timing took {took:.2f} s)")


if __name__ == "__main__":
    main()
