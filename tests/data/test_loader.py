"""DataLoader: coverage per epoch, (seed, epoch) determinism, prefetch, errors and early stops."""

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minidl.data import DataLoader
from minidl.data import transforms as T


def numbered_images(count, height=4, width=4):
    """uint8 images ``(count, H, W)`` whose every pixel holds the sample's index (mod 256), labels = index."""
    x = np.broadcast_to((np.arange(count) % 256).astype(np.uint8)[:, None, None], (count, height, width)).copy()
    return x, np.arange(count)


def prefetch_threads_alive():
    return [thread for thread in threading.enumerate() if thread.name == "minidl-prefetch" and thread.is_alive()]


@settings(max_examples=25, deadline=None)
@given(
    count=st.integers(1, 200), batch_size=st.integers(1, 64), shuffle=st.booleans(),
    drop_last=st.booleans(), prefetch=st.integers(0, 3),
)
def test_each_epoch_visits_every_sample_once_in_len_batches(count, batch_size, shuffle, drop_last, prefetch):
    x, y = numbered_images(count)
    loader = DataLoader(x, y, batch_size=batch_size, shuffle=shuffle, seed=1, drop_last=drop_last, prefetch=prefetch)
    batches = list(loader)
    assert len(batches) == len(loader)
    seen = np.concatenate([y_batch for _, y_batch in batches]) if batches else np.array([], int)
    expected_count = count - count % batch_size if drop_last else count
    assert len(seen) == expected_count
    assert len(np.unique(seen)) == expected_count
    assert all(len(y_batch) == batch_size for _, y_batch in batches[:-1])
    if not shuffle:
        np.testing.assert_array_equal(seen, np.arange(expected_count))


def test_batches_are_float32_nhwc_with_labels_as_given():
    x, _ = numbered_images(10)
    labels = np.arange(10, dtype=np.uint8)
    x_batch, y_batch = next(iter(DataLoader(x, labels, batch_size=4, shuffle=False)))
    assert x_batch.shape == (4, 4, 4, 1) and x_batch.dtype == np.float32
    assert y_batch.dtype == np.uint8
    np.testing.assert_array_equal(x_batch[:, 0, 0, 0], y_batch)


def test_without_labels_the_label_batch_is_none():
    x, _ = numbered_images(5)
    assert all(y_batch is None for _, y_batch in DataLoader(x, batch_size=2))


def test_num_samples_and_len():
    x, y = numbered_images(10)
    assert DataLoader(x, y, batch_size=4).num_samples == 10
    assert len(DataLoader(x, y, batch_size=4)) == 3
    assert len(DataLoader(x, y, batch_size=4, drop_last=True)) == 2


def epoch_labels(loader, epoch):
    loader.set_epoch(epoch)
    return np.concatenate([y_batch for _, y_batch in loader])


def test_shuffle_order_is_a_function_of_seed_and_epoch():
    x, y = numbered_images(100)
    first, second, other_seed = (DataLoader(x, y, batch_size=7, seed=s) for s in (3, 3, 4))
    np.testing.assert_array_equal(epoch_labels(first, 5), epoch_labels(second, 5))
    assert not np.array_equal(epoch_labels(first, 5), epoch_labels(first, 6))
    assert not np.array_equal(epoch_labels(first, 5), epoch_labels(other_seed, 5))


def test_iterating_again_advances_the_epoch_and_set_epoch_replays_it():
    x, y = numbered_images(50)
    loader = DataLoader(x, y, batch_size=8, seed=0)
    epoch0 = np.concatenate([b for _, b in loader])
    epoch1 = np.concatenate([b for _, b in loader])
    assert not np.array_equal(epoch0, epoch1)
    np.testing.assert_array_equal(epoch_labels(loader, 1), epoch1)
    np.testing.assert_array_equal(epoch_labels(loader, 0), epoch0)


def test_augmented_batches_replay_bit_for_bit_whatever_the_prefetch_depth():
    x = np.random.default_rng(0).integers(0, 256, size=(90, 28, 28), dtype=np.uint8)
    augment = T.Compose([T.RandomFlip(), T.RandomRotation(20), T.RandomCrop(28, padding=3)])

    def run(prefetch, epoch):
        loader = DataLoader(x, batch_size=16, seed=11, transform=augment, prefetch=prefetch)
        loader.set_epoch(epoch)
        return np.concatenate([x_batch for x_batch, _ in loader])

    np.testing.assert_array_equal(run(0, 2), run(3, 2))
    assert not np.array_equal(run(0, 2), run(0, 3))


def test_loader_without_seed_picks_one_and_still_replays_epochs():
    x, y = numbered_images(40)
    loader = DataLoader(x, y, batch_size=8)
    assert isinstance(loader.seed, int)
    np.testing.assert_array_equal(epoch_labels(loader, 2), epoch_labels(loader, 2))


class FailOnBatch:
    """A transform that raises on its ``failing_call``-th call."""

    def __init__(self, failing_call):
        self.failing_call, self.calls = failing_call, 0

    def __call__(self, batch, rng):
        self.calls += 1
        if self.calls == self.failing_call:
            raise ArithmeticError("augmentation failed on purpose")
        return batch


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_worker_error_is_raised_in_the_consumer_after_the_good_batches(prefetch):
    x, y = numbered_images(40)
    loader = DataLoader(x, y, batch_size=4, shuffle=False, transform=FailOnBatch(3), prefetch=prefetch)
    received = []
    with pytest.raises(ArithmeticError, match="augmentation failed on purpose"):
        for _, y_batch in loader:
            received.append(y_batch)
    assert len(received) == 2
    assert not prefetch_threads_alive()


def test_consumer_stopping_early_stops_the_worker():
    x, y = numbered_images(1000)
    loader = DataLoader(x, y, batch_size=2, prefetch=2)
    for index, _ in enumerate(loader):
        if index == 3:
            break
    assert not prefetch_threads_alive()


def test_consumer_exception_stops_the_worker():
    x, y = numbered_images(1000)
    with pytest.raises(KeyError):
        for _ in DataLoader(x, y, batch_size=2, prefetch=2):
            raise KeyError("training step failed")
    assert not prefetch_threads_alive()


def test_prefetch_computes_batches_in_a_background_thread():
    threads_used = set()

    def record_thread(batch, rng):
        threads_used.add(threading.current_thread().name)
        return batch

    x, y = numbered_images(20)
    list(DataLoader(x, y, batch_size=5, transform=record_thread, prefetch=2))
    assert threads_used == {"minidl-prefetch"}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(x=np.zeros((4, 2, 2)), y=np.zeros(3)), "x has 4 samples but y has 3"),
        (dict(x=np.zeros((4, 2, 2)), batch_size=0), "batch_size must be at least 1"),
        (dict(x=np.zeros((4, 2, 2)), prefetch=-1), "prefetch must be 0"),
        (dict(x=np.zeros(4)), r"x must be a batch of samples \(N, ...\), got shape \(4,\)"),
    ],
)
def test_bad_arguments_are_rejected_with_what_was_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DataLoader(**kwargs)
