"""MaxPooling2D outside training: the maxima alone, and a backward that still works."""

import numpy as np

from minidl import layers


def test_inference_pooling_gives_the_training_outputs_and_the_same_gradient_afterwards(backend):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 7, 6, 3)).astype(np.float32)
    grad_out = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)  # 'same': ceil(7/2) x ceil(6/2)
    trained, inferred = layers.MaxPooling2D(2, padding="same"), layers.MaxPooling2D(2, padding="same")
    for layer in (trained, inferred):
        layer.build(x.shape[1:])
    np.testing.assert_array_equal(inferred.forward(x, training=False), trained.forward(x, training=True))
    assert inferred.argmax is None  # only the maxima were computed
    np.testing.assert_array_equal(inferred.backward(grad_out), trained.backward(grad_out))
