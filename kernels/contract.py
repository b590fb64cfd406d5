"""The kernel contract: every function each backend (``numpy_ref``, ``cpu``, ``cuda``) implements, with
its parameters, shapes and dtypes.  ``tests/kernels/test_contract.py`` checks that the three modules
implement exactly this, with these parameter names, and declare nothing else but their ``EXTRAS``.

Conventions for every kernel unless its entry says otherwise:

* arrays are the backend's own (NumPy for ``numpy_ref`` and ``cpu``, device arrays for ``cuda``);
  :func:`to_device` and :func:`to_host` cross over;
* dtypes are float32 or float64, the same for every float argument, and outputs have the inputs' dtype;
  ``argmax`` arrays are int32;
* images are channels-last ``(N, H, W, C)``; ``kernel_size``, ``strides``, ``pool_size`` are pairs of
  ints; ``pads`` is ``((top, bottom), (left, right))`` from ``minidl.layers.base``, where a negative
  bottom or right padding drops that many trailing rows or columns;
* outputs are fresh arrays the caller may keep and write (C-contiguous on ``cpu`` except ``im2col``'s);
  kernels marked *in place* write their first argument(s) and return ``None``.
"""

#: name -> (parameters, what it computes with its shapes)
KERNELS = {
    # arrays and elementwise helpers
    "to_device": (("x",), "a host array as this backend's array (C-contiguous)"),
    "to_host": (("x",), "this backend's array as a NumPy array"),
    "zeros": (("shape", "dtype"), "a zero array of shape and dtype"),
    "empty": (("shape", "dtype"), "an array of shape and dtype whose values are unset: for outputs written whole"),
    "zeros_like": (("x",), "a zero array of x's shape and dtype"),
    "add": (("a", "b"), "a + b elementwise, same shapes"),
    "multiply": (("a", "b"), "a * b elementwise, same shapes"),
    "accumulate": (("total", "x"), "in place: total += x, same shapes"),
    "all_finite": (("x",), "True when no element is NaN or inf (a Python bool)"),
    # GEMMs: 2-D matrices, or stacks (S, M, K) @ (S, K, N)
    "matmul": (("a", "b"), "a @ b: (M, K) @ (K, N) -> (M, N), or stacked (S, M, K) @ (S, K, N) -> (S, M, N)"),
    "matmul_tn": (("a", "b"), "a^T @ b: (K, M), (K, N) -> (M, N), or stacked"),
    "matmul_nt": (("a", "b"), "a @ b^T: (M, K), (N, K) -> (M, N), or stacked"),
    "bias_grad": (("grad_out",), "column sums: (M, N) -> (N,)"),
    # convolution by im2col
    "im2col": (("x", "kernel_size", "strides", "pads"),
               "(N, H, W, C) -> cols (N*OH*OW, KH*KW*C), row (n, oh, ow) holding the window at (oh, ow); "
               "cpu returns the transpose of a C-contiguous array for fewer than 4 channels"),
    "col2im": (("cols", "x_shape", "kernel_size", "strides", "pads"),
               "adjoint of im2col: (N*OH*OW, KH*KW*C) -> (N, H, W, C), overlapping windows summed"),
    # the same convolution with nothing kept for backward (cpu: one image at a time, in cache)
    "conv_by_image": (("x", "kernel_matrix", "kernel_size", "strides", "pads"),
                      "im2col(x) @ kernel_matrix: (N, H, W, C), (KH*KW*C, F) -> (N, OH, OW, F)"),
    "conv_by_image_kernel_grad": (("x", "grad_out", "kernel_size", "strides", "pads"),
                                  "im2col(x)^T @ grad_out: (N, H, W, C), (N, OH, OW, F) -> (KH*KW*C, F)"),
    "conv_by_image_input_grad": (("grad_out", "kernel_matrix", "x_shape", "kernel_size", "strides", "pads"),
                                 "col2im(grad_out @ kernel_matrix^T): (N, OH, OW, F), (KH*KW*C, F) -> x_shape"),
    # convolution by Winograd F(2x2, 3x3)
    # Winograd F(m x m, 3 x 3) with m = tile (2 or 4, minidl.kernels.winograd), P = (m + 2)^2 positions
    "winograd_kernel": (("kernel", "tile"), "U = G W G^T: (3, 3, C_in, F) -> (P, C_in, F)"),
    "winograd_kernel_grad": (("grad_kernel_tiles",), "adjoint of winograd_kernel: (P, C_in, F) -> (3, 3, C_in, F)"),
    "winograd_tiles": (("x", "pads", "tile"), "V = B^T d B of every (m+2)x(m+2) tile: (N, H, W, C) -> (P, N*TH*TW, C)"),
    "winograd_tiles_grad": (("grad_tiles", "x_shape", "pads"),
                            "adjoint of winograd_tiles: (P, N*TH*TW, C) -> x_shape"),
    "winograd_outputs": (("products", "out_shape"), "A^T M A of every tile: (P, N*TH*TW, F) -> out_shape (N, OH, OW, F)"),
    "winograd_outputs_grad": (("grad_out", "tile"), "adjoint of winograd_outputs: (N, OH, OW, F) -> (P, N*TH*TW, F)"),
    # the same Winograd convolution with nothing kept for backward (cpu: one image at a time, in cache)
    "winograd_by_image": (("x", "kernel_tiles", "pads"),
                          "winograd_outputs(winograd_tiles(x) @ kernel_tiles): (N, H, W, C), (P, C, F) "
                          "-> (N, OH, OW, F)"),
    "winograd_by_image_kernel_grad": (("x", "grad_out", "pads", "tile"),
                                      "winograd_tiles(x)^T @ winograd_outputs_grad(grad_out) per position: "
                                      "(N, H, W, C), (N, OH, OW, F) -> (P, C, F)"),
    "winograd_by_image_grads": (("x", "grad_out", "kernel_tiles", "pads"),
                                "(winograd_by_image_kernel_grad, winograd_tiles_grad(dM @ kernel_tiles^T)) from one "
                                "dM = winograd_outputs_grad(grad_out): (N, H, W, C), (N, OH, OW, F), (P, C, F) "
                                "-> ((P, C, F), (N, H, W, C))"),
    # pooling
    "maxpool_forward": (("x", "pool_size", "strides", "pads"), "(N, H, W, C) -> (out, argmax), both (N, OH, OW, C)"),
    "maxpool_values": (("x", "pool_size", "strides", "pads"), "maxpool_forward's out alone: (N, H, W, C) -> (N, OH, OW, C)"),
    "maxpool_backward": (("grad_out", "argmax", "x_shape", "pool_size", "strides", "pads"),
                         "(N, OH, OW, C) routed to each window's maximum -> x_shape"),
    "avgpool_forward": (("x", "pool_size", "strides", "pads"), "mean of each window's real pixels: -> (N, OH, OW, C)"),
    "avgpool_backward": (("grad_out", "x_shape", "pool_size", "strides", "pads"),
                         "(N, OH, OW, C) spread evenly over each window's real pixels -> x_shape"),
    # a bias and activation under average pooling in one pass
    "bias_activation_avgpool": (("z", "bias", "activation", "pool_size", "strides", "pads"),
                                "(y, pooled): y = f(z + bias) (N, H, W, C), bias (C,) or None, and avgpool_forward(y)"),
    "avgpool_activation_grad": (("grad_pooled", "y", "activation", "pool_size", "strides", "pads"),
                                "(grad_z, grad_bias): avgpool_backward(grad_pooled) * f'(z) from y, and its sum "
                                "over N, H, W"),
    # a one-channel 3x3 convolution under 2x2 max pooling in one pass
    "conv3x3_maxpool": (("x", "kernel"), "(N, H, W, 1), (3, 3, 1, F) -> (pooled, argmax), both (N, (H-2)//2, (W-2)//2, F)"),
    "conv3x3_maxpool_values": (("x", "kernel"), "conv3x3_maxpool's pooled alone"),
    "conv3x3_maxpool_kernel_grad": (("x", "grad_pooled", "argmax"), "dL/dkernel (3, 3, 1, F) from the pooled gradient"),
    # activations
    "bias_activation": (("z", "bias", "activation"), "f(z + bias), bias (C,) or None over the last axis; any shape"),
    "activation_grad": (("grad_out", "y", "activation"), "dL/dy * f'(z) from y = f(z); same shape"),
    "activation_bias_grad": (("grad_out", "y", "activation"),
                             "(activation_grad, its column sums) in one pass: (M, C) -> ((M, C), (C,))"),
    "leaky_relu": (("z", "alpha"), "where(z > 0, z, alpha z); same shape"),
    "leaky_relu_grad": (("grad_out", "z", "alpha"), "dL/dz of leaky_relu; same shape"),
    "softmax": (("z",), "row-wise softmax: (M, K) -> (M, K)"),
    "softmax_grad": (("grad_out", "y"), "y * (g - sum_k g_k y_k) row-wise: (M, K) -> (M, K)"),
    # losses, regularization, dropout
    "softmax_cross_entropy": (("logits", "targets"), "(N, K), (N, K) -> (losses (N,), dL/dlogits (N, K))"),
    "dropout": (("x", "rate", "seed"), "(y = x * mask, mask): mask 1/(1-rate) where the hash of (seed, i) keeps "
                                        "element i (probability 1-rate), else 0; the same on every backend"),
    "regularize_grad": (("grad", "param", "l1", "l2"), "in place: grad += l1 sign(param) + 2 l2 param"),
    "regularization_penalty": (("param", "l1", "l2"), "l1 sum|w| + l2 sum w^2 (a Python float)"),
    # joining tensors (merge layers); axis is a non-negative axis index
    "concatenate": (("parts", "axis"),
                    "a list of arrays equal but on axis, joined along it: (N, H, W, C_i) -> (N, H, W, sum C_i)"),
    "split": (("x", "sizes", "axis"), "inverse of concatenate: x -> [arrays], the i-th holding sizes[i] of axis"),
    # optimizer updates, in place on param and its slots
    "sgd_update": (("param", "grad", "velocity", "lr", "momentum", "nesterov"), "in place: Keras's SGD"),
    "adam_update": (("param", "grad", "m", "v", "lr", "beta_1", "beta_2", "epsilon", "step"), "in place: Keras's Adam"),
    "rmsprop_update": (("param", "grad", "mean_square", "lr", "rho", "epsilon"), "in place: Keras's RMSprop"),
    # batch normalization over rows (M, C): one column per channel
    "channel_moments": (("x",), "(M, C) -> (mean (C,), biased variance (C,)) of each column"),
    "batch_norm": (("x", "mean", "variance", "gamma", "beta", "epsilon"),
                   "gamma (x - mean) / sqrt(variance + epsilon) + beta per column: (M, C) -> (M, C)"),
    "batch_norm_backward": (("grad_out", "x", "mean", "variance", "gamma", "epsilon", "batch_statistics"),
                            "(M, C) -> (dL/dx (M, C), dL/dgamma (C,), dL/dbeta (C,)); with batch_statistics "
                            "the mean and variance are x's own and their gradient is included"),
    "moving_average_update": (("moving", "value", "momentum"),
                              "in place: moving = momentum moving + (1 - momentum) value, same shapes"),
    # padding and rescaling
    "zero_pad": (("x", "pads"), "(N, H, W, C) -> (N, top + H + bottom, left + W + right, C), zeros around; pads >= 0"),
    "zero_pad_grad": (("grad_out", "pads"), "adjoint of zero_pad: the inner (N, H, W, C) of grad_out"),
    "scale_shift": (("x", "scale", "offset"), "x * scale + offset for numbers scale and offset; same shape"),
}

#: Functions a backend offers beyond the contract (and no other module has to).
EXTRAS = {
    "minidl.kernels.numpy_ref": ("check_activation", "dropout_counter", "dropout_hash_bits", "dropout_threshold"),
    "minidl.kernels.cpu": ("apply_thread_policy", "cache_report", "check_available", "set_num_threads",
                           "thread_policy", "warmup"),
    "minidl.kernels.cuda": ("check_available", "get_gemm", "reset_transfer_count", "set_gemm", "transfer_count"),
}
