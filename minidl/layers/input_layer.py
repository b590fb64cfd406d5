"""The model's input declaration."""


class Input:
    """``Input(shape=(28, 28, 1))`` as the first entry of a ``Sequential`` fixes the per-sample input
    shape, so the model builds at once (``summary()`` works before any data is seen)."""

    def __init__(self, shape, name=None):
        shape = tuple(shape)
        if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
            raise ValueError(f"Input: shape must be a tuple of positive ints, got {shape!r}")
        self.shape, self.name = shape, name

    def __repr__(self):
        return f"Input(shape={self.shape})"
