"""The measured conv algorithm choice: every candidate method computes the layer's own conv, the
fastest one is timed once per shape and machine and remembered, and the cost model times nothing."""

import collections
import json
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minidl
from minidl import layers
from minidl.engine import conv_choice
from minidl.engine.conv_methods import ConvLinear, candidate_methods


#: seconds of the image-by-image Winograd candidates in the timings below: slower than every other
SLOW_WINOGRAD_BY_IMAGE = {"winograd_by_image": 9.0, "winograd_4x4_by_image": 9.0}


def built_conv(input_shape, **options):
    conv = layers.Conv2D(**{"filters": 3, "kernel_size": 3, **options}, dtype="float64")
    conv.build(input_shape)
    return conv


@st.composite
def conv_problems(draw):
    """A conv over a small image: 1x1, 3x3 or 5x5 kernels, strides 1 or 2, 'valid' or 'same', and
    1-3 or 64+ input channels."""
    kernel = draw(st.sampled_from([1, 3, 5]))
    size = draw(st.integers(kernel, kernel + 6))
    channels = draw(st.sampled_from([1, 2, 3, 64, 70]))
    options = {"filters": draw(st.integers(1, 5)), "kernel_size": kernel, "strides": draw(st.sampled_from([1, 2])),
               "padding": draw(st.sampled_from(["valid", "same"]))}
    return (size, draw(st.integers(kernel, kernel + 6)), channels), options, draw(st.integers(1, 3))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(problem=conv_problems())
def test_every_candidate_computes_the_layers_own_conv_and_gradients(backend, problem):
    input_shape, options, images = problem
    conv = built_conv(input_shape, **options)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((images, *input_shape))
    grad_z = rng.standard_normal((images, *conv.output_shape))
    expected_z = conv.forward(x)  # linear activation: z itself
    expected_grad_x = conv.backward(grad_z)
    expected_grad_kernel = np.array(conv.grads["kernel"])
    for name, method in candidate_methods(conv).items():
        linear = ConvLinear(conv, method)
        np.testing.assert_allclose(linear.forward(x), expected_z, rtol=1e-10, atol=1e-10, err_msg=name)
        np.testing.assert_allclose(linear.backward(grad_z, True), expected_grad_x, rtol=1e-10, atol=1e-10, err_msg=name)
        np.testing.assert_allclose(conv.grads["kernel"], expected_grad_kernel, rtol=1e-10, atol=1e-10, err_msg=name)


def test_winograd_is_a_candidate_for_3x3_stride_1_kernels_only():
    every_conv = {"im2col", "im2col_by_image"}
    winograd = {"winograd", "winograd_4x4", "winograd_by_image", "winograd_4x4_by_image"}
    assert set(candidate_methods(built_conv((8, 8, 2)))) == every_conv | winograd
    assert set(candidate_methods(built_conv((8, 8, 2), padding="same"))) == every_conv | winograd
    assert set(candidate_methods(built_conv((8, 8, 2), strides=2))) == every_conv
    assert set(candidate_methods(built_conv((8, 8, 2), kernel_size=5))) == every_conv


@pytest.fixture
def measuring(monkeypatch, tmp_path):
    """Measure mode with the cache in a fresh file, on a machine whose load stays 0 (a real load
    average over 1 per core, falling between two plans, would have a choice timed afresh); yields
    the file's path."""
    path = tmp_path / "choices.json"
    monkeypatch.setenv("MINIDL_CONV_CHOICE", "measure")
    monkeypatch.setenv("MINIDL_CONV_CACHE", str(path))
    monkeypatch.setattr(conv_choice, "load_per_core", lambda: 0.0)
    return path


def test_the_first_choice_times_every_candidate_and_keeps_the_fastest_on_disk(measuring):
    conv = built_conv((10, 10, 4))
    chosen = conv_choice.choose_method(conv, conv.pads, True)
    (entry,) = json.loads(measuring.read_text()).values()
    assert set(entry["seconds"]) == set(candidate_methods(conv)) == {"im2col", "im2col_by_image", "winograd",
                                                                     "winograd_4x4", "winograd_by_image",
                                                                     "winograd_4x4_by_image"}
    assert all(seconds > 0 for seconds in entry["seconds"].values())
    methods = candidate_methods(conv)
    assert chosen == entry["method"] == conv_choice.leanest_of_the_fastest(conv, methods, conv.pads, entry["seconds"])
    assert entry["images"] == conv_choice.MEASURE_IMAGES


def test_an_inference_choice_times_forward_passes_alone_in_inference_chunks_under_a_key_of_its_own(
        measuring, monkeypatch):
    conv = built_conv((10, 10, 4))
    chunked = []
    forward = ConvLinear.forward

    def counted_forward(linear, x, training=True):
        assert not training
        chunked.append(linear.inference_images_per_chunk)
        return forward(linear, x, training)

    monkeypatch.setattr(ConvLinear, "forward", counted_forward)
    monkeypatch.setattr(ConvLinear, "backward", lambda *args: pytest.fail("a backward in an inference timing"))
    bound = 2 * 10 * 10 * 27 * 8  # two images' im2col rows
    chosen = conv_choice.choose_method(conv, conv.pads, False, inference_bytes=bound)
    (key, entry), = json.loads(measuring.read_text()).items()
    assert chosen == entry["method"] and set(entry["seconds"]) == set(candidate_methods(conv))
    assert json.loads(key.split(" | ")[1])["inference_chunk_bytes"] == bound
    assert key != f"{conv_choice.machine_key()} | {conv_choice.shape_key(conv, conv.pads, False)}"
    assert 2 in chunked and None in chunked  # im2col in chunks of two images; image by image unchunked


def test_the_machine_key_tells_gemms_on_numbas_threads_from_gemms_on_blass_own(monkeypatch):
    """Conv choices timed with BLAS on its own threads do not stand for GEMMs split across Numba's."""
    from minidl.kernels import cpu

    previous = minidl.get_backend()
    minidl.set_backend("numba")
    try:
        monkeypatch.setattr(cpu, "GEMM_LIBRARY", None)
        on_blas_threads = conv_choice.machine_key()
        monkeypatch.setattr(cpu, "GEMM_LIBRARY", object())
        assert conv_choice.machine_key() == on_blas_threads + ", GEMMs on them"
    finally:
        minidl.set_backend(previous)


def test_choices_timed_on_an_earlier_revision_of_the_kernels_are_timed_again(measuring, monkeypatch):
    conv = built_conv((8, 8, 2))
    monkeypatch.setattr(conv_choice, "KERNELS_REVISION", 1)
    for _ in range(conv_choice.CONFIRMING_TIMINGS):
        conv_choice.choose_method(conv, conv.pads, False)
    timed = []
    monkeypatch.setattr(conv_choice, "measured_seconds", lambda conv, candidates, *args: timed.append(1) or
                        {name: 1.0 for name in candidates})
    conv_choice.choose_method(conv, conv.pads, False)
    assert timed == []  # the choice of revision 1 answers
    monkeypatch.setattr(conv_choice, "KERNELS_REVISION", 2)
    conv_choice.choose_method(conv, conv.pads, False)
    assert timed == [1]
    assert sorted(key.split(":")[0] for key in json.loads(measuring.read_text())) == ["kernels r1", "kernels r2"]


def test_the_machine_key_names_the_products_the_small_matrix_kernels_take(monkeypatch):
    """Choices timed before the image-by-image products were cut to fit the library's small-matrix
    kernels, or on a library without them, are timed again."""
    from minidl.kernels import cpu

    previous = minidl.get_backend()
    minidl.set_backend("numba")
    try:
        monkeypatch.setattr(cpu, "GEMM_LIBRARY", SimpleNamespace(small_product=0))
        without_small_kernels = conv_choice.machine_key()
        monkeypatch.setattr(cpu, "GEMM_LIBRARY", SimpleNamespace(small_product=10**6))
        assert conv_choice.machine_key() == without_small_kernels + ", small GEMMs up to 1000000 multiply-adds"
    finally:
        minidl.set_backend(previous)


def test_the_process_settings_are_applied_before_the_machine_key_and_the_timing(measuring, monkeypatch):
    """A plan built before training (``model.summary()`` first, as Keras programs do) timed its convs on
    Numba's default threads and glibc's default allocator, kept the choice under another machine key,
    and trained with it."""
    calls = []
    monkeypatch.setattr(conv_choice, "apply_process_settings", lambda: calls.append("settings"))
    for name in ("machine_key", "measured_seconds"):
        original = getattr(conv_choice, name)
        monkeypatch.setattr(conv_choice, name,
                            lambda *args, original=original, name=name: calls.append(name) or original(*args))
    conv = built_conv((10, 10, 4))
    conv_choice.choose_method(conv, conv.pads, True)
    assert calls == ["settings", "machine_key", "measured_seconds"]


def test_every_candidate_is_timed_on_the_same_images(measuring, monkeypatch):
    """Where the workspace bound allows each candidate a different number of images, all are timed
    on the fewest (the seconds of 7 images against 13 favoured the method with the most scratch)."""
    conv = built_conv((24, 24, 8))
    bytes_per_image = {name: ConvLinear(conv, method, conv.pads).bytes_per_image()
                       for name, method in candidate_methods(conv).items()}
    assert len({scratch for scratch in bytes_per_image.values() if scratch}) == 3  # im2col and both Winograds
    monkeypatch.setattr(conv_choice, "MEASURE_WORKSPACE_BYTES", 5 * max(bytes_per_image.values()))
    timed_images = collections.defaultdict(set)
    forward = ConvLinear.forward

    def counted_forward(linear, x, *args, **kwargs):
        timed_images[linear.method.name].add(x.shape[0])
        return forward(linear, x, *args, **kwargs)

    monkeypatch.setattr(ConvLinear, "forward", counted_forward)
    conv_choice.choose_method(conv, conv.pads, True)
    assert dict(timed_images) == {name: {5} for name in bytes_per_image}
    (entry,) = json.loads(measuring.read_text()).values()
    assert entry["images"] == 5


@pytest.mark.parametrize("seconds, expected", [
    ({"im2col": 1.0, "im2col_by_image": 2.0, "winograd": 1.05, "winograd_4x4": 1.5, **SLOW_WINOGRAD_BY_IMAGE},
     "leanest of im2col and winograd"),
    ({"im2col": 1.0, "im2col_by_image": 2.0, "winograd": 1.2, "winograd_4x4": 1.5, **SLOW_WINOGRAD_BY_IMAGE},
     "im2col"),  # beyond the tie
    ({"im2col": 2.0, "im2col_by_image": 2.0, "winograd": 1.0, "winograd_4x4": 1.08, **SLOW_WINOGRAD_BY_IMAGE},
     "leanest of winograd and winograd_4x4"),
    ({"im2col": 1.0, "im2col_by_image": 1.05, "winograd": 1.5, "winograd_4x4": 1.5, **SLOW_WINOGRAD_BY_IMAGE},
     "im2col_by_image"),  # no scratch
])
def test_of_candidates_timed_within_the_tie_the_one_with_least_scratch_wins(measuring, monkeypatch, seconds, expected):
    conv = built_conv((10, 10, 4))
    methods = candidate_methods(conv)
    scratch = {name: ConvLinear(conv, method, conv.pads).bytes_per_image() for name, method in methods.items()}
    if expected.startswith("leanest of "):
        expected = min(expected.removeprefix("leanest of ").split(" and "), key=scratch.get)
    monkeypatch.setattr(conv_choice, "measured_seconds", lambda *args: seconds)
    assert conv_choice.choose_method(conv, conv.pads, True) == expected


def test_a_confirmed_choice_is_used_without_timing_again(measuring, monkeypatch):
    conv = built_conv((10, 10, 4))
    conv_choice.choose_method(conv, conv.pads, True)
    chosen = conv_choice.choose_method(conv, conv.pads, True)  # the confirming timing
    (entry,) = json.loads(measuring.read_text()).values()
    assert entry["timings"] == conv_choice.CONFIRMING_TIMINGS == 2

    def no_timing(*args):
        raise AssertionError("timed again")

    monkeypatch.setattr(conv_choice, "measured_seconds", no_timing)
    assert conv_choice.choose_method(conv, conv.pads, True) == chosen
    with pytest.raises(AssertionError, match="timed again"):  # another shape is a new problem
        conv_choice.choose_method(conv, ((1, 1), (1, 1)), True)


@pytest.mark.parametrize("timings", [1, None])  # None: an entry from before the count, one timing
def test_a_new_choice_is_timed_again_and_each_candidate_keeps_its_faster_timing(measuring, monkeypatch, timings):
    """A burst of load that slowed im2col's passes in the first timing (2.0 against 1.0 later) no
    longer decides the choice: the second timing's im2col and the first's winograd are merged."""
    conv, key = cached_entry(measuring, seconds={"im2col": 2.0, "im2col_by_image": 3.0, "winograd": 1.2,
                                                 "winograd_4x4": 3.0, **SLOW_WINOGRAD_BY_IMAGE}, timings=timings)
    monkeypatch.setattr(conv_choice, "measured_seconds",
                        lambda *args: {"im2col": 1.0, "im2col_by_image": 2.0, "winograd": 1.5, "winograd_4x4": 2.5,
                                       **SLOW_WINOGRAD_BY_IMAGE})
    assert conv_choice.choose_method(conv, conv.pads, True) == "im2col"
    entry = json.loads(measuring.read_text())[key]
    assert entry["seconds"] == {"im2col": 1.0, "im2col_by_image": 2.0, "winograd": 1.2, "winograd_4x4": 2.5,
                                **SLOW_WINOGRAD_BY_IMAGE}
    assert entry["timings"] == 2


@pytest.mark.parametrize("cached, planned", [("winograd", "winograd"), ("im2col", None)])
def test_the_plan_follows_the_cached_choice(measuring, cached, planned):
    model = minidl.Sequential([layers.Input((10, 10, 4)), layers.Conv2D(3, 3), layers.Flatten(), layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse", optimize={"inference_conv_algorithm": False, "workspace_chunking": False,
                                                        "inference_chunking": False})
    conv = model.layers[0]
    key = f"{conv_choice.machine_key()} | {conv_choice.shape_key(conv, conv.pads, False)}"
    seconds = {"im2col": 1.0, "im2col_by_image": 1.0, "winograd": 1.0, "winograd_4x4": 1.0, **SLOW_WINOGRAD_BY_IMAGE}
    measuring.write_text(json.dumps({key: {"method": cached, "seconds": seconds, "images": conv_choice.MEASURE_IMAGES,
                                           "load_per_core": 0.0, "timings": 2}}))
    step = model.plan.step_of(conv)
    method = getattr(getattr(step, "linear", None), "method", None)  # a plain step computes im2col itself
    assert (method.name if method else None) == planned


def cached_entry(measuring, **fields):
    """A cache holding one choice of ``built_conv((10, 10, 4))``, with ``fields`` over a valid entry."""
    conv = built_conv((10, 10, 4))
    key = f"{conv_choice.machine_key()} | {conv_choice.shape_key(conv, conv.pads, True)}"
    entry = {"method": "winograd", "seconds": {"im2col": 2.0, "im2col_by_image": 2.0, "winograd": 1.0,
                                               "winograd_4x4": 3.0, **SLOW_WINOGRAD_BY_IMAGE},
             "images": conv_choice.MEASURE_IMAGES, "load_per_core": 0.5, "timings": 2, **fields}
    measuring.write_text(json.dumps({key: entry}))
    return conv, key


@pytest.mark.parametrize("fields, load_now, timed_again", [
    ({}, 0.1, False),
    ({"seconds": {"im2col": 2.0}}, 0.1, True),  # a candidate it never timed
    ({"load_per_core": 6.0}, 0.5, True),  # timed on a busy machine, quieter now
    ({"load_per_core": 6.0}, 7.0, False),  # busier now: the old timing is as good as a new one
    ({"load_per_core": "high"}, 0.5, True),
    ({"load_per_core": None}, 0.5, True),  # timed before the load was recorded
    ({"images": None}, 0.1, True),  # timed before every candidate ran on the same images
    ({"images": 16}, 0.1, True),  # timed on fewer images than are timed now
])
def test_a_cached_choice_is_timed_again_when_it_missed_a_candidate_or_its_images_or_was_timed_under_load(
        measuring, monkeypatch, fields, load_now, timed_again):
    conv, key = cached_entry(measuring, **fields)
    monkeypatch.setattr(conv_choice, "load_per_core", lambda: load_now)
    monkeypatch.setattr(conv_choice, "measured_seconds", lambda *args: {"im2col": 1.0, "winograd": 3.0})
    chosen = conv_choice.choose_method(conv, conv.pads, True)
    assert chosen == ("im2col" if timed_again else "winograd")
    entry = json.loads(measuring.read_text())[key]
    assert (entry["load_per_core"] == load_now) is timed_again


def test_remeasure_mode_times_a_cached_choice_again(measuring, monkeypatch):
    conv, key = cached_entry(measuring)
    monkeypatch.setenv("MINIDL_CONV_CHOICE", "remeasure")
    monkeypatch.setattr(conv_choice, "measured_seconds", lambda *args: {"im2col": 1.0, "winograd": 3.0})
    assert conv_choice.choose_method(conv, conv.pads, True) == "im2col"
    assert json.loads(measuring.read_text())[key]["method"] == "im2col"


def test_a_malformed_cache_file_is_measured_over_and_replaced(measuring):
    measuring.write_text("{not json")
    conv = built_conv((10, 10, 4))
    conv_choice.choose_method(conv, conv.pads, False)
    assert len(json.loads(measuring.read_text())) == 1


def test_timing_leaves_the_layers_gradients_as_they_were(measuring):
    conv = built_conv((10, 10, 4))
    conv.grads["kernel"] = kept = np.ones(conv.params["kernel"].shape)
    conv_choice.choose_method(conv, conv.pads, True)
    assert conv.grads == {"kernel": kept}


def test_the_cost_model_times_nothing_and_writes_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("MINIDL_CONV_CHOICE", "model")
    monkeypatch.setenv("MINIDL_CONV_CACHE", str(tmp_path / "choices.json"))
    monkeypatch.setattr(conv_choice, "measured_seconds", lambda *args: pytest.fail("timed under the model"))
    assert conv_choice.choose_method(built_conv((10, 10, 32)), ((0, 0), (0, 0)), True) == "winograd"
    assert conv_choice.choose_method(built_conv((10, 10, 3)), ((0, 0), (0, 0)), True) == "im2col"
    assert not (tmp_path / "choices.json").exists()


def test_an_unknown_choice_mode_is_named(monkeypatch):
    monkeypatch.setenv("MINIDL_CONV_CHOICE", "fastest")
    with pytest.raises(ValueError, match="MINIDL_CONV_CHOICE must be one of 'measure', 'remeasure', 'model', "
                                         "got 'fastest'"):
        conv_choice.choose_method(built_conv((10, 10, 4)), ((0, 0), (0, 0)), True)
