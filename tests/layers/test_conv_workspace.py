"""Large inputs: im2col and Winograd work in chunks of images under the workspace bound, with the same
results."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from minidl import layers


@pytest.mark.parametrize("algorithm, per_image", [("im2col", 9 * 9 * 27 * 4), ("winograd", 16 * 5 * 5 * (3 + 4) * 4)])
def test_chunked_forward_and_backward_equal_the_single_chunk_ones(algorithm, per_image):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 9, 9, 3)).astype(np.float32)
    grad_y = rng.standard_normal((5, 9, 9, 4)).astype(np.float32)
    whole = layers.Conv2D(4, 3, padding="same", activation="relu", algorithm=algorithm)
    chunked = layers.Conv2D(4, 3, padding="same", activation="relu", algorithm=algorithm,
                            max_workspace_bytes=2 * per_image)  # two images per chunk
    for layer in (whole, chunked):
        layer.build(x.shape[1:])
        layer.input_grad_needed = True
    chunked.set_weights(whole.get_weights())
    assert [c.stop - c.start for c in chunked.image_chunks(5)] == [2, 2, 1]
    np.testing.assert_allclose(chunked.forward(x), whole.forward(x), rtol=1e-6)
    np.testing.assert_allclose(chunked.backward(grad_y), whole.backward(grad_y), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(chunked.grads["kernel"], whole.grads["kernel"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("algorithm, per_image", [("im2col", 109 * 109 * 3 * 3 * 32 * 4),
                                                  ("winograd", 16 * 55 * 55 * (32 + 64) * 4)])
def test_workspace_of_a_224_pixel_batch_stays_under_the_bound(algorithm, per_image):
    layer = layers.Conv2D(64, 3, max_workspace_bytes=256 * 2**20, algorithm=algorithm)
    layer.build((111, 111, 32))
    assert layer.images_per_chunk() == 256 * 2**20 // per_image
    assert layer.workspace_bytes(32) == 2 * layer.images_per_chunk() * per_image <= 2 * 256 * 2**20


@pytest.mark.slow
def test_a_training_step_on_224_pixel_images_fits_in_memory():
    script = textwrap.dedent("""
        import resource
        import numpy as np
        import minidl
        from minidl import layers
        model = minidl.Sequential([
            layers.Input((224, 224, 3)),
            layers.Conv2D(32, 3, activation="relu"), layers.MaxPooling2D(2),
            layers.Conv2D(64, 3, activation="relu"), layers.MaxPooling2D(2),
            layers.Flatten(), layers.Dense(64, activation="relu"), layers.Dense(10, activation="softmax")])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        rng = np.random.default_rng(0)
        loss = model.train_on_batch(rng.random((32, 224, 224, 3), dtype=np.float32), rng.integers(0, 10, 32))
        assert np.isfinite(loss)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
    """)
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    peak_mib = int(completed.stdout.split()[-1])
    # activations and their gradients are about 1.3 GiB at this size; unchunked im2col would add 1.8 GiB
    assert peak_mib < 3000
