"""Batches for training: shuffling, augmentation and a background prefetch thread.

``DataLoader(x, y)`` yields ``(x_batch, y_batch)`` with ``x_batch`` float32 ``(B, H, W, C)`` (a grayscale
``(N, H, W)`` array gets a channel axis) and ``y_batch`` the matching rows of ``y`` as given (``None``
without labels).

Reproducibility: epoch ``e``'s sample order and augmentation are a pure function of ``(seed, e)``.  The
order comes from ``SeedSequence([seed, e, 0])``, the augmentation of batch ``b`` from
``SeedSequence([seed, e, 1, b])``, so resuming at epoch ``e`` (``set_epoch(e)``) replays exactly the
batches an uninterrupted run would have seen, whatever the prefetch depth.  Each ``iter(loader)``
runs the epoch last given to :meth:`DataLoader.set_epoch`, then the next one, and so on.

Prefetch: with ``prefetch > 0`` a worker thread gathers and augments up to ``prefetch`` batches ahead
of the consumer (OpenCV and numpy copies release the GIL, so this overlaps with training).  An
exception in the worker is re-raised in the consumer; a consumer that stops early (``break``, an
exception) stops the worker and joins it.
"""

import queue
import threading

import numpy as np

SHUFFLE_STREAM, AUGMENT_STREAM = 0, 1
POLL_INTERVAL_S = 0.05


class DataLoader:
    """Iterate over ``(x_batch, y_batch)`` of ``batch_size`` samples, ``len(loader)`` batches an epoch.

    ``x``: ``(N, H, W, C)`` or ``(N, H, W)`` array (uint8 or float).  ``y``: ``(N, ...)`` labels or None.
    ``transform``: a callable ``transform(batch, rng)`` such as :class:`minidl.data.transforms.Compose`.
    ``seed``: None picks a random one (kept, so epochs still differ and ``set_epoch`` still replays).
    ``drop_last``: skip the final batch when it is smaller than ``batch_size``.
    """

    class_names = None  # set by image_dataset_from_directory

    def __init__(self, x, y=None, batch_size=32, shuffle=True, seed=None, transform=None, prefetch=2, drop_last=False):
        x = np.asarray(x)
        if x.ndim < 2:
            raise ValueError(f"DataLoader: x must be a batch of samples (N, ...), got shape {x.shape}")
        if y is not None:
            y = np.asarray(y)
            if len(y) != len(x):
                raise ValueError(f"DataLoader: x has {len(x)} samples but y has {len(y)}")
        if int(batch_size) < 1:
            raise ValueError(f"DataLoader: batch_size must be at least 1, got {batch_size}")
        if int(prefetch) < 0:
            raise ValueError(f"DataLoader: prefetch must be 0 (no thread) or more, got {prefetch}")
        self.x, self.y = x, y
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(np.random.SeedSequence().entropy % (1 << 63)) if seed is None else int(seed)
        self.transform = transform
        self.prefetch = int(prefetch)
        self.drop_last = bool(drop_last)
        self.next_epoch = 0

    @property
    def num_samples(self):
        return len(self.x)

    def __len__(self):
        """Batches per epoch."""
        full, remainder = divmod(self.num_samples, self.batch_size)
        return full if self.drop_last or remainder == 0 else full + 1

    def set_epoch(self, epoch):
        """Make the next iteration run epoch ``epoch`` (its order and augmentation depend only on it)."""
        self.next_epoch = int(epoch)

    def epoch_order(self, epoch):
        """Sample indices in the order epoch ``epoch`` visits them."""
        if not self.shuffle:
            return np.arange(self.num_samples)
        return np.random.default_rng([self.seed, epoch, SHUFFLE_STREAM]).permutation(self.num_samples)

    def make_batch(self, epoch, batch_index, indices):
        """Gather, augment and convert batch ``batch_index`` of epoch ``epoch``."""
        x_batch = self.x[indices]
        if x_batch.ndim == 3:
            x_batch = x_batch[..., np.newaxis]
        if self.transform is not None:
            rng = np.random.default_rng([self.seed, epoch, AUGMENT_STREAM, batch_index])
            x_batch = self.transform(x_batch, rng)
        x_batch = np.asarray(x_batch, dtype=np.float32)
        y_batch = None if self.y is None else self.y[indices]
        return x_batch, y_batch

    def epoch_batches(self, epoch):
        """Generator of the batches of epoch ``epoch``, computed in the calling thread."""
        order = self.epoch_order(epoch)
        for batch_index in range(len(self)):
            indices = order[batch_index * self.batch_size:(batch_index + 1) * self.batch_size]
            yield self.make_batch(epoch, batch_index, indices)

    def __iter__(self):
        epoch = self.next_epoch
        self.next_epoch += 1
        if self.prefetch == 0:
            return self.epoch_batches(epoch)
        return prefetched(self.epoch_batches(epoch), self.prefetch)

    def __repr__(self):
        return (
            f"DataLoader(num_samples={self.num_samples}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"seed={self.seed}, transform={self.transform!r}, prefetch={self.prefetch}, drop_last={self.drop_last})"
        )


_DONE = object()


def prefetched(items, depth):
    """Yield from the iterator ``items``, computed up to ``depth`` items ahead in a worker thread.

    The worker's exception, if any, is raised here at the point it occurred in the sequence.  Closing
    this generator early (the consumer stops) tells the worker to stop and waits for it.
    """
    slots = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def hand_over(message):
        """Put ``message`` in the queue unless the consumer has gone; True if delivered."""
        while not stop.is_set():
            try:
                slots.put(message, timeout=POLL_INTERVAL_S)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for item in items:
                if not hand_over((item, None)):
                    return
        except BaseException as error:  # handed to the consumer, which re-raises it
            hand_over((None, error))
            return
        hand_over((_DONE, None))

    worker = threading.Thread(target=work, name="minidl-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item, error = slots.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        worker.join()
