"""The names Keras programs reach for exist where Keras has them, and behave as Keras's do."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minidl
from minidl import layers, losses, metrics, optimizers, regularizers, saving
from minidl.utils import to_categorical


def blobs(n=120, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    centers = np.array([[0.0, 3.0], [3.0, -2.0], [-3.0, -2.0]])
    return (centers[labels] + rng.standard_normal((n, 2)) * 0.5).astype(np.float32), labels


def mlp():
    return minidl.Sequential([minidl.Input(shape=(2,)), layers.Dense(8, activation="tanh", name="hidden"),
                              layers.Dense(3, activation="softmax", name="out")])


# ------------------------------------------------------------------------------------ modules


def test_keras_module_paths_resolve_to_minidl_objects():
    from minidl.datasets import fashion_mnist, mnist
    from minidl.models import Sequential, load_model
    from minidl.preprocessing.image import ImageDataGenerator

    assert Sequential is minidl.Sequential and load_model is minidl.load_model
    assert minidl.Input is layers.Input
    assert callable(mnist.load_data) and callable(fashion_mnist.load_data)
    assert minidl.preprocessing.image.ImageDataGenerator is ImageDataGenerator
    assert minidl.utils.to_categorical is to_categorical


def test_dataset_modules_export_their_class_names():
    from minidl.datasets import fashion_mnist, mnist

    assert mnist.class_names == [str(d) for d in range(10)]
    assert len(fashion_mnist.class_names) == 10
    assert fashion_mnist.class_names[0] == "T-shirt/top" and fashion_mnist.class_names[9] == "Ankle boot"


def test_fashion_mnist_load_data_has_keras_shapes_and_dtypes():
    from minidl.datasets import fashion_mnist

    (x_train, y_train), (x_test, y_test) = fashion_mnist.load_data()
    assert (x_train.shape, x_train.dtype, y_train.shape, y_train.dtype) == ((60000, 28, 28), np.uint8,
                                                                            (60000,), np.uint8)
    assert (x_test.shape, y_test.shape) == ((10000, 28, 28), (10000,))
    assert set(np.unique(y_test)) == set(range(10))


def test_mnist_load_data_offline_says_where_it_looked_and_what_to_do(tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    from minidl.data import DatasetNotFoundError
    from minidl.datasets import mnist

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("MINIDL_DATA_DIR", raising=False)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(DatasetNotFoundError, match="(?s)MNIST files not found. Looked in:.*network unreachable"
                                                   ".*To get the files:.*download train-images-idx3-ubyte.gz"):
        mnist.load_data()


# ----------------------------------------------------------------------------- to_categorical


@given(st.lists(st.integers(0, 9), min_size=1, max_size=40), st.integers(0, 5))
@settings(max_examples=30, deadline=None)
def test_to_categorical_rows_are_one_hot_at_the_label(labels, extra_classes):
    num_classes = max(labels) + 1 + extra_classes
    one_hot = to_categorical(labels, num_classes)
    assert one_hot.shape == (len(labels), num_classes) and one_hot.dtype == np.float32
    assert np.array_equal(one_hot.argmax(axis=1), labels) and np.all(one_hot.sum(axis=1) == 1)
    assert np.array_equal(to_categorical(np.asarray(labels)[:, None], num_classes), one_hot)


def test_to_categorical_defaults_to_max_label_plus_one_and_refuses_bad_labels():
    assert to_categorical(np.array([0, 3], dtype=np.uint8)).shape == (2, 4)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\), got values in \[0, 5\]"):
        to_categorical([0, 5], 3)
    with pytest.raises(ValueError, match="labels must be integers"):
        to_categorical([0.5, 1.0])


# ------------------------------------------------------------------ regularizers, losses, metrics


def test_lowercase_regularizers_are_keras_spellings_of_the_classes():
    assert regularizers.l2(1e-4).get_config() == {"l1": 0.0, "l2": 1e-4}
    assert regularizers.l1(0.1).get_config() == {"l1": 0.1, "l2": 0.0}
    assert regularizers.l1_l2(l1=0.1, l2=0.2).get_config() == {"l1": 0.1, "l2": 0.2}
    layer = layers.Dense(3, kernel_regularizer=regularizers.l2(0.01))
    assert isinstance(layer.kernel_regularizer, regularizers.L2)


@pytest.mark.parametrize("metric_name", ["accuracy", "acc", "sparse_categorical_accuracy",
                                         "categorical_accuracy", "sparse_top_k_categorical_accuracy"])
def test_history_keys_are_the_metric_names_keras_logs(metric_name):
    x, y = blobs()
    model = mlp()
    model.compile(optimizers.Adam(0.05), losses.SparseCategoricalCrossentropy(), metrics=[metric_name])
    history = model.fit(x, y, epochs=2, batch_size=16, validation_split=0.25, verbose=0, seed=0)
    assert sorted(history.history) == sorted(["loss", metric_name, "val_loss", f"val_{metric_name}"])


def test_sparse_and_categorical_accuracy_give_the_same_values_on_the_same_predictions():
    y_true = np.eye(3)[[0, 1, 2, 1]]
    y_pred = np.array([[0.8, 0.1, 0.1], [0.1, 0.2, 0.7], [0.1, 0.1, 0.8], [0.3, 0.6, 0.1]])
    sparse, categorical = metrics.SparseCategoricalAccuracy(), metrics.CategoricalAccuracy()
    for metric in (sparse, categorical):
        metric.update(y_true, y_pred)
    assert sparse.result() == categorical.result() == 0.75
    assert (sparse.name, categorical.name) == ("sparse_categorical_accuracy", "categorical_accuracy")


def test_loss_classes_from_logits_train_like_the_aliases():
    x, y = blobs()
    model = minidl.Sequential([minidl.Input(shape=(2,)), layers.Dense(3)])
    model.compile(optimizers.SGD(0.1), losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["sparse_categorical_accuracy"])
    model.fit(x, y, epochs=10, batch_size=16, verbose=0, seed=0)
    assert model.evaluate(x, y, verbose=0)[1] > 0.9


# ----------------------------------------------------------------- build, get_layer, evaluate


def test_build_takes_keras_shape_with_the_batch_axis():
    model = minidl.Sequential([layers.Conv2D(4, 3), layers.Flatten(), layers.Dense(2)])
    model.build((None, 8, 8, 3))
    assert model.input_shape == (8, 8, 3) and model.output_shape == (2,)
    per_sample = minidl.Sequential([layers.Conv2D(4, 3), layers.Flatten(), layers.Dense(2)])
    per_sample.build((8, 8, 3))
    assert per_sample.input_shape == (8, 8, 3)
    declared = minidl.Sequential([minidl.Input((8, 8, 3)), layers.Conv2D(4, 3)])
    declared.build((32, 8, 8, 3))  # a concrete batch size in front of the declared shape
    assert declared.input_shape == (8, 8, 3)


def test_get_layer_by_name_or_index_and_clear_errors():
    model = mlp()
    assert model.get_layer("hidden") is model.layers[0]
    assert model.get_layer(name="out") is model.get_layer(index=1) is model.get_layer(index=-1)
    with pytest.raises(ValueError, match=r"no layer named 'nope'; the layers are \['hidden', 'out'\]"):
        model.get_layer("nope")
    with pytest.raises(ValueError, match="index 2, but the model has 2 layers"):
        model.get_layer(index=2)
    with pytest.raises(ValueError, match="one of the two"):
        model.get_layer(name="out", index=1)


def test_evaluate_returns_a_scalar_without_metrics_a_list_with_them_or_a_dict():
    x, y = blobs()
    model = mlp()
    model.compile("adam", "sparse_categorical_crossentropy")
    assert isinstance(model.evaluate(x, y, verbose=0), float)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy", "f1"])
    loss, accuracy, f1 = model.evaluate(x, y, verbose=0)
    assert model.evaluate(x, y, verbose=0, return_dict=True) == {"loss": loss, "accuracy": accuracy, "f1": f1}


# ------------------------------------------------------------------------------------- saving


@pytest.mark.parametrize("name", ["m.hdf5", "m", "m.weights", "m.pt"])
def test_save_refuses_a_suffix_it_does_not_write_and_writes_nothing(tmp_path, name):
    model = mlp()
    with pytest.raises(ValueError, match=r"it writes files named \*\.minidl or \*\.keras or \*\.h5"):
        model.save(tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_save_weights_and_checkpoints_refuse_foreign_suffixes(tmp_path):
    model = mlp()
    with pytest.raises(ValueError, match=r"save_weights: .*m\.weights\.h5 has the suffix '\.h5'.*\*\.weights"):
        model.save_weights(tmp_path / "m.weights.h5")
    with pytest.raises(ValueError, match=r"\*\.minidl or \*\.keras or \*\.h5"):
        minidl.callbacks.ModelCheckpoint(str(tmp_path / "best.hdf5"))
    with pytest.raises(ValueError, match=r"\*\.weights"):
        minidl.callbacks.ModelCheckpoint(str(tmp_path / "best.minidl"), save_weights_only=True)
    assert list(tmp_path.iterdir()) == []
