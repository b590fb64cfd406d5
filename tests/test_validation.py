"""Bad arguments and bad data: each refused with an error naming what was wrong and what is expected,
and a refused call changes no weight."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minidl
from minidl import callbacks, layers, optimizers, validation
from minidl.presets import tiny_cnn

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def small_model(optimizer="adam"):
    model = minidl.Sequential([layers.Input((4,)), layers.Dense(5, activation="relu"),
                               layers.Dense(3, activation="softmax")], name="small")
    model.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def small_data(n=16):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 4)), np.arange(n) % 3


def weights_unchanged(model, before):
    return all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


# ------------------------------------------------------------------------- values beyond float32


@given(row=st.integers(0, 15), column=st.integers(0, 3),
       value=st.sampled_from([1e39, -1e39, np.finfo(np.float64).max, np.nan, np.inf, -np.inf]))
@FAST
def test_a_value_that_is_not_finite_in_float32_is_refused_by_fit_evaluate_and_predict(row, column, value):
    model = small_model()
    x, y = small_data()
    x[row, column] = value
    before = model.get_weights()
    for call in (lambda: model.fit(x, y, verbose=0), lambda: model.evaluate(x, y, verbose=0),
                 lambda: model.predict(x), lambda: model.train_on_batch(x, y)):
        with pytest.raises(ValueError, match="small: x contains NaN or infinite values.*float32 range"):
            call()
    assert weights_unchanged(model, before)


def test_a_float64_model_takes_values_beyond_the_float32_range():
    model = small_model().cast(np.float64)
    x, _ = small_data()
    x[0, 0] = 1e39
    assert model.predict(x).dtype == np.float64


# --------------------------------------------------------------------------------- batch sizes


bad_batch_sizes = st.one_of(st.integers(max_value=0), st.booleans(), st.floats(allow_nan=True),
                            st.text(max_size=3), st.just([8]))


@given(batch_size=bad_batch_sizes)
@FAST
def test_a_batch_size_that_is_not_a_positive_int_is_refused_by_every_method(batch_size):
    model = small_model()
    x, y = small_data()
    before = model.get_weights()
    for method, call in (("fit", lambda: model.fit(x, y, batch_size=batch_size, verbose=0)),
                         ("evaluate", lambda: model.evaluate(x, y, batch_size=batch_size, verbose=0)),
                         ("predict", lambda: model.predict(x, batch_size=batch_size))):
        with pytest.raises(ValueError, match=f"{method}: batch_size must be a positive int, got"):
            call()
    assert weights_unchanged(model, before)


@given(batch_size=st.integers(1, 40))
@FAST
def test_predict_gives_one_row_per_sample_for_any_positive_batch_size(batch_size):
    model = small_model()
    x, _ = small_data()
    np.testing.assert_allclose(model.predict(x, batch_size=batch_size), model.predict(x, batch_size=16),
                               rtol=1e-6)


# ------------------------------------------------------------------------------ other arguments


@given(seed=st.one_of(st.integers(max_value=-1), st.booleans(), st.floats(), st.text(max_size=2)))
@FAST
def test_a_seed_that_is_not_a_non_negative_int_is_refused(seed):
    model = small_model()
    with pytest.raises(ValueError, match="fit: seed must be None or a non-negative int"):
        model.fit(*small_data(), seed=seed, verbose=0)


@pytest.mark.parametrize("validation_data, got", [((np.zeros((2, 4)),), "a tuple of length 1"),
                                                   ([np.zeros((2, 4)), [0, 1], None], "a list of length 3"),
                                                   (np.zeros((2, 4)), "ndarray")])
def test_validation_data_that_is_not_a_pair_is_refused_naming_what_it_got(validation_data, got):
    model = small_model()
    before = model.get_weights()
    with pytest.raises(ValueError, match=f"validation_data must be a pair \\(x_val, y_val\\).*got {got}"):
        model.fit(*small_data(), validation_data=validation_data, verbose=0)
    assert weights_unchanged(model, before)


# ----------------------------------------------------------------------------------- arrays


@pytest.mark.parametrize("method", ["fit", "evaluate", "train_on_batch"])
def test_empty_arrays_are_refused_by_every_method_that_needs_samples(method):
    model = small_model()
    calls = {"fit": lambda x, y: model.fit(x, y, verbose=0), "evaluate": lambda x, y: model.evaluate(x, y, verbose=0),
             "train_on_batch": model.train_on_batch}
    with pytest.raises(ValueError, match=r"small: x has no samples \(shape \(0, 4\)\)"):
        calls[method](np.zeros((0, 4)), np.zeros(0, int))


def test_predict_on_an_empty_array_returns_an_empty_result_of_the_output_shape():
    assert small_model().predict(np.zeros((0, 4))).shape == (0, 3)


def test_complex_inputs_are_refused_rather_than_silently_cast():
    model = small_model()
    x, y = small_data()
    with pytest.raises(ValueError, match=r"x is complex \(complex128\)"):
        model.fit(x + 1j, y, verbose=0)


def test_inputs_of_any_memory_layout_or_byte_order_give_identical_results():
    model = small_model()
    x, _ = small_data()
    expected = model.predict(x)
    for variant in (np.asfortranarray(x), np.repeat(x, 2, axis=1)[:, ::2], x.astype(">f8"), x.astype(np.float32)):
        np.testing.assert_array_equal(model.predict(variant), expected)


# -------------------------------------------------------------------------------- structure


def test_a_layer_added_twice_is_refused_and_the_model_is_unchanged():
    dense = layers.Dense(4)
    model = minidl.Sequential([layers.Input((4,)), dense])
    with pytest.raises(ValueError, match=f"layer '{dense.name}' is already in this model"):
        model.add(dense)
    assert model.layers == [dense]


def test_one_optimizer_instance_compiled_into_a_second_model_is_refused():
    optimizer = optimizers.Adam()
    first, second = small_model(optimizer), small_model("sgd")
    with pytest.raises(ValueError, match="this Adam instance is already compiled into model 'small'"):
        second.compile(optimizer, "sparse_categorical_crossentropy")
    assert isinstance(second.optimizer, optimizers.SGD) and first.optimizer is optimizer


def test_an_optimizer_is_free_again_once_its_model_is_compiled_with_another():
    optimizer = optimizers.Adam()
    first = small_model(optimizer)
    first.compile("sgd", "sparse_categorical_crossentropy")
    second = small_model(optimizer)
    assert second.optimizer is optimizer


def test_slots_of_another_shape_are_refused_before_any_parameter_changes():
    optimizer = optimizers.Adam()
    w1, w2 = np.ones(3), np.ones(2)
    optimizer.apply_gradients([(w1, np.ones(3)), (w2, np.ones(2))])
    before = [w1.copy(), w2.copy()]
    with pytest.raises(ValueError, match=r"parameter 1 has shape \(5,\).*nothing was updated"):
        optimizer.apply_gradients([(w1, np.ones(3)), (np.ones(5), np.ones(5))])
    assert np.array_equal(w1, before[0]) and optimizer.iterations == 1


class CompileMidFit(callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        self.model.compile("sgd", "mse")


def test_compile_from_a_callback_during_fit_is_refused_and_allowed_afterwards():
    model = small_model()
    with pytest.raises(RuntimeError, match=r"compile\(\) was called while fit\(\) is running"):
        model.fit(*small_data(), verbose=0, callbacks=[CompileMidFit()])
    assert model.loss.name == "sparse_categorical_crossentropy"
    model.compile("sgd", "sparse_categorical_crossentropy")  # the failed fit left no flag behind


# ------------------------------------------------------------------------------ architectures


@pytest.mark.parametrize("config, message", [
    ({"name": "m"}, "has no 'layers'; expected Sequential.get_config"),
    ([], "an architecture is a JSON object"),
    ({"name": "m", "layers": [{"class_name": "Dense"}]}, "'layers' must be a list of"),
    ({"name": "m", "layers": [], "input_shape": [28, -1]}, "'input_shape' must be a list of positive ints"),
    ({"name": "m", "layers": [], "input_shape": [2**20, 2**20]}, "values per sample, more than"),
])
def test_a_malformed_architecture_is_refused_naming_its_source_and_the_problem(config, message):
    with pytest.raises(ValueError, match=f"arch.json.*{message}"):
        validation.architecture(config, "arch.json")


def test_the_preset_architectures_pass_the_architecture_check():
    config = tiny_cnn().get_config()
    assert validation.architecture(config, "tiny") is config


# ------------------------------------------------------------------------- threads


def test_two_threads_predicting_with_one_model_both_get_the_single_thread_outputs():
    import threading

    model = tiny_cnn()
    model.compile("sgd", "categorical_crossentropy")
    rng = np.random.default_rng(1)
    inputs = [rng.random((40, 28, 28, 1), dtype=np.float32) for _ in range(2)]
    expected = [model.predict(x, batch_size=8) for x in inputs]
    wrong = [0, 0]

    def predict_repeatedly(which):
        for _ in range(150):
            if not np.array_equal(model.predict(inputs[which], batch_size=8), expected[which]):
                wrong[which] += 1

    threads = [threading.Thread(target=predict_repeatedly, args=(which,)) for which in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == [0, 0]
