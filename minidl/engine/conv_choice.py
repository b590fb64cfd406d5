"""Which method computes a conv fastest on this machine: timed on first use, remembered on disk.

The ``conv_algorithm`` pass (:mod:`minidl.engine.passes`) asks :func:`choose_method` for every conv,
and the ``inference_conv_algorithm`` pass asks again for a forward pass alone outside training, run
in the plan's inference chunks (without a backward, Winograd's fewer multiplications weigh more).
As cuDNN's benchmark mode does, the first time a shape is planned every candidate of
:func:`minidl.engine.conv_methods.candidate_methods` runs forward and backward passes over
:data:`MEASURE_IMAGES` random images, the candidates taking turns (the fastest of
:data:`MEASURE_REPEATS` passes counts), and the fastest method wins; methods within
:data:`TIED_WITHIN` of it count as tied, and of those the one with the least scratch wins.  The
answer, with every candidate's seconds and the machine's load at the time, is kept in a JSON file
under a key made of the conv's shape and the machine (CPU, cores, backend, Numba threads, how the
GEMMs are called, and the revision of the kernels: :func:`machine_key`), so later processes plan
without timing anything.  The process settings
(:func:`minidl.backend.apply_process_settings`: threads and allocator) are applied before any
timing, also where a plan is first built by ``summary()`` before training.  Every candidate is timed
on the same images (as many as the largest candidate's scratch allows).  A new choice is timed again
at the next plan, and each candidate keeps the faster of its two timings
(:data:`CONFIRMING_TIMINGS`).  A cached choice is timed afresh when it did not time every candidate
there is now (a new method) or not on the images they would be timed on now, or when it was timed
on a busy machine (load per core above :data:`BUSY_LOAD_PER_CORE`: other processes' work falls on
the candidates unevenly) and the machine is quieter now.

Environment:

* ``MINIDL_CONV_CHOICE``: ``measure`` (the default) as above; ``remeasure``: time every conv again
  and replace its cached choice; or ``model``: no timing and no file, the cost model
  :func:`modelled_choice` (deterministic; the test suite uses it).
* ``MINIDL_CONV_CACHE``: the file of choices (default ``$XDG_CACHE_HOME/minidl/conv_choices.json``,
  ``~/.cache/minidl/conv_choices.json`` without ``XDG_CACHE_HOME``).
"""

import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from minidl.backend import apply_process_settings, get_backend, ops
from minidl.engine.conv_methods import ConvLinear, candidate_methods

#: Images per timed pass, and timed passes per candidate (the fastest counts).  A plan serves every
#: batch size, and a method's cost per image grows with the batch where the batch's scratch passes the
#: last-level cache (im2col's ``cols``): on 16 images the image-by-image method and im2col tied on a
#: 64x64x3 5x5 stride-2 conv, which took 118 and 155 us per image on 64 images, 118 and 166 on 128
#: ([D17]).  64 images show that at half the first plan's timing cost of 128.
MEASURE_IMAGES = 64
MEASURE_REPEATS = 5

#: At most this much scratch per timed pass; fewer images where one would need more.
MEASURE_WORKSPACE_BYTES = 128 * 2**20

#: The cost model picks Winograd for 3x3 stride-1 convs with at least this many input channels: its
#: GEMMs have ``K = C_in``, and thinner ones were not measured to pay for the tile transforms ([D3]).
WINOGRAD_MIN_CHANNELS = 32

#: A choice timed while the 1-minute load average per core was above this is timed again at a later
#: plan under less load.
BUSY_LOAD_PER_CORE = 1.0

#: A choice is timed at this many moments (later plans, usually in later processes) before it is final;
#: each candidate keeps the fastest of all its timings, so that one burst of load from the rest of the
#: machine (which can slow one candidate's passes 2x on a shared VM) does not decide a choice alone.
CONFIRMING_TIMINGS = 2

#: Candidates timed within this fraction of the fastest count as tied (alternating passes of one
#: process still differ by 5-10% from run to run); of tied candidates the one with the least scratch
#: per image wins, so that a near-tie does not buy a few percent of time with more memory.
TIED_WITHIN = 0.10

CHOICE_MODES = ("measure", "remeasure", "model")

#: The revision of the candidates' kernels, part of every key: raised when a change to them may change
#: which one is fastest, so that choices timed on earlier kernels are timed again.  2: the
#: image-by-image Winograd takes an image whose scratch passes a core's L2 in bands of tile rows ([D25]);
#: 3: the Winograd input transform and its adjoint run a row of tiles at a time through a strip of
#: image rows ([D27]); 4: the image-by-image Winograd makes both gradients from one output-gradient
#: transform ([D28]); 5: the image-by-image im2col cuts its products into runs of as few as 48 pixels
#: for the small-matrix kernels ([D21]).
KERNELS_REVISION = 5


def choice_mode():
    """One of :data:`CHOICE_MODES` from ``MINIDL_CONV_CHOICE``; raises ``ValueError`` naming a bad value."""
    mode = os.environ.get("MINIDL_CONV_CHOICE", "measure")
    if mode not in CHOICE_MODES:
        raise ValueError(f"MINIDL_CONV_CHOICE must be one of {', '.join(map(repr, CHOICE_MODES))}, got {mode!r}")
    return mode


def load_per_core():
    """The 1-minute load average over the number of cores; 0.0 where the system does not say."""
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except (AttributeError, OSError):
        return 0.0


def cache_path():
    """The JSON file of measured choices (see the module's docstring)."""
    if os.environ.get("MINIDL_CONV_CACHE"):
        return Path(os.environ["MINIDL_CONV_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "minidl" / "conv_choices.json"


def machine_key():
    """What the timings depend on besides the shape: the kernels' revision (:data:`KERNELS_REVISION`),
    CPU model, cores, backend and its threads (and whether the GEMMs run on them,
    ``minidl.kernels.cpu.GEMM_LIBRARY``, and which products its small-matrix kernels take: the
    image-by-image method cuts its products to fit them, [D21])."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), model)
    except OSError:
        pass
    threads = ""
    if get_backend() == "numba":
        import numba

        from minidl.kernels import cpu

        gemms = ", GEMMs on them" if cpu.GEMM_LIBRARY is not None else ""
        small_product = getattr(cpu.GEMM_LIBRARY, "small_product", 0)
        if small_product:
            gemms += f", small GEMMs up to {small_product} multiply-adds"
        threads = f", {numba.get_num_threads()} numba threads{gemms}"
    return f"kernels r{KERNELS_REVISION}: {model}, {os.cpu_count()} cores, {get_backend()}{threads}"


def shape_key(conv, pads, input_grad_needed, inference_bytes=None):
    """The conv's problem as a string: input, kernel, strides, pads, dtype, and whether dL/dx is
    computed; for a choice outside training, the bound of its inference chunks instead."""
    problem = {"input": conv.input_shape, "kernel": [*conv.kernel_size, conv.input_shape[2], conv.filters],
               "strides": conv.strides, "pads": pads, "dtype": conv.dtype.name}
    if inference_bytes is None:
        problem["input_grad"] = bool(input_grad_needed)
    else:
        problem["inference_chunk_bytes"] = inference_bytes
    return json.dumps(problem)


def modelled_choice(conv, names):
    """The deterministic choice among ``names``: Winograd where it applies and the conv reads at least
    :data:`WINOGRAD_MIN_CHANNELS` channels, else im2col + GEMM."""
    if "winograd" in names and conv.input_shape[2] >= WINOGRAD_MIN_CHANNELS:
        return "winograd"
    return "im2col"


def images_to_time(conv, methods, pads, images=MEASURE_IMAGES):
    """How many images each candidate's timed pass runs: ``images``, or fewer where one candidate's
    scratch for them would pass :data:`MEASURE_WORKSPACE_BYTES`.  The same number for every
    candidate, so that their seconds compare."""
    largest = max(ConvLinear(conv, method, pads).bytes_per_image() for method in methods.values())
    return max(1, min(images, MEASURE_WORKSPACE_BYTES // max(1, largest)))


def timed_pass(conv, method, pads, input_grad_needed, images, inference_bytes=None):
    """A function that runs one forward + backward pass of ``conv`` by ``method`` over ``images``
    random images and returns its seconds; with ``inference_bytes``, a forward pass alone outside
    training, in chunks of images whose scratch fits that many bytes (as the plan runs it)."""
    linear = ConvLinear(conv, method, pads)
    rng = np.random.default_rng(0)
    x = ops.to_device(rng.standard_normal((images, *conv.input_shape)).astype(conv.dtype))
    grad_z = ops.to_device(rng.standard_normal((images, *linear.output_hw(), conv.filters)).astype(conv.dtype))
    if inference_bytes is not None:
        linear.inference_images_per_chunk = linear.images_within(inference_bytes)

    def one_pass():
        start = time.perf_counter()
        if inference_bytes is not None:
            ops.to_host(linear.forward(x, training=False))
            return time.perf_counter() - start
        linear.forward(x)
        grad_x = linear.backward(grad_z, input_grad_needed)
        ops.to_host(conv.grads["kernel"] if grad_x is None else grad_x)  # waits for an asynchronous device
        return time.perf_counter() - start

    return one_pass


def measured_seconds(conv, methods, pads, input_grad_needed, images, inference_bytes=None):
    """``{name: seconds}``: the fastest of :data:`MEASURE_REPEATS` passes over ``images`` images of each
    of ``methods`` (``{name: method}``), the candidates taking turns so that load from the rest of the
    machine falls on all of them alike (forward passes alone with ``inference_bytes``, see
    :func:`timed_pass`).  The layer's ``grads`` are left as they were."""
    kept_grads = dict(conv.grads)
    try:
        passes = {name: timed_pass(conv, method, pads, input_grad_needed, images, inference_bytes)
                  for name, method in methods.items()}
        for one_pass in passes.values():
            one_pass()  # compiles and allocates: not counted
        seconds = {name: float("inf") for name in passes}
        for _ in range(MEASURE_REPEATS):
            for name, one_pass in passes.items():
                seconds[name] = min(seconds[name], one_pass())
        return seconds
    finally:
        conv.grads.clear()
        conv.grads.update(kept_grads)


def read_choices(path):
    """The cache file's ``{key: entry}``; an unreadable or malformed file counts as empty."""
    try:
        choices = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return choices if isinstance(choices, dict) else {}


def write_choices(path, choices):
    """Replace the cache file atomically (a crash leaves the old file whole); a read-only cache is skipped."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as scratch:
            json.dump(choices, scratch, indent=1, sort_keys=True)
        os.replace(scratch.name, path)
    except OSError:
        pass


def answers_for(entry, candidates, images, load_now):
    """Whether a cached ``entry`` still answers: it timed exactly ``candidates`` on the ``images`` images
    they would be timed on now (entries without ``images`` timed each candidate on as many as its own
    scratch allowed, which favoured the method with the most scratch per image; entries on fewer
    images missed the batch's cache misses), it says the load it was timed under, and that was not a
    busy machine's that is quieter now (``load_now`` per core)."""
    if not isinstance(entry, dict) or entry.get("method") not in candidates:
        return False
    if not isinstance(entry.get("seconds"), dict) or set(entry["seconds"]) != set(candidates):
        return False
    if entry.get("images") != images:
        return False
    load_then = entry.get("load_per_core")
    if not isinstance(load_then, (int, float)):
        return False  # timed before the load was recorded, or a malformed entry
    return load_then <= BUSY_LOAD_PER_CORE or load_now >= load_then


def leanest_of_the_fastest(conv, methods, pads, seconds):
    """The name of the method with the least scratch per image among those of ``methods`` timed
    within :data:`TIED_WITHIN` of the fastest in ``seconds`` (``{name: seconds}``)."""
    fastest = min(seconds.values())
    tied = [name for name, taken in seconds.items() if taken <= fastest * (1 + TIED_WITHIN)]
    return min(tied, key=lambda name: (ConvLinear(conv, methods[name], pads).bytes_per_image(), seconds[name]))


def choose_method(conv, pads, input_grad_needed, inference_bytes=None):
    """The name of the method (a key of :func:`candidate_methods`) that computes ``conv`` over ``pads``
    fastest here: measured once per shape and machine and cached, or modelled (see the module).  With
    ``inference_bytes`` the method of a forward pass alone outside training, in chunks of images
    whose scratch fits that many bytes."""
    candidates = candidate_methods(conv)
    if len(candidates) == 1:
        return next(iter(candidates))
    mode = choice_mode()
    if mode == "model":
        return modelled_choice(conv, candidates)
    apply_process_settings()  # the threads and allocator the conv will run under, and the key names
    path, key = cache_path(), f"{machine_key()} | {shape_key(conv, pads, input_grad_needed, inference_bytes)}"
    load_now, images = load_per_core(), images_to_time(conv, candidates, pads)
    entry = read_choices(path).get(key)
    still_answers = mode == "measure" and answers_for(entry, candidates, images, load_now)
    if still_answers and timings_of(entry) >= CONFIRMING_TIMINGS:
        return entry["method"]
    seconds = measured_seconds(conv, candidates, pads, input_grad_needed, images, inference_bytes)
    timings = 1
    if still_answers:
        seconds = {name: min(taken, entry["seconds"][name]) for name, taken in seconds.items()}
        timings = timings_of(entry) + 1
    chosen = leanest_of_the_fastest(conv, candidates, pads, seconds)
    choices = read_choices(path)
    choices[key] = {"method": chosen, "seconds": seconds, "images": images, "load_per_core": round(load_now, 2),
                    "timings": timings}
    write_choices(path, choices)
    return chosen


def timings_of(entry):
    """How many timings a cached ``entry`` merged (entries from before the count are one)."""
    timings = entry.get("timings")
    return timings if isinstance(timings, int) and timings >= 1 else 1
