"""Weight penalties added to the loss: ``L1``, ``L2`` and ``L1L2`` with Keras's names and defaults.

The penalty of a weight tensor ``w`` is ``l1 * sum|w| + l2 * sum w^2``; its gradient,
``l1 * sign(w) + 2 * l2 * w``, is added to the data gradient before the optimizer step.
"""

from minidl.backend import ops


class L1L2:
    def __init__(self, l1=0.0, l2=0.0):
        if l1 < 0 or l2 < 0:
            raise ValueError(f"regularization factors must be >= 0, got l1={l1}, l2={l2}")
        self.l1, self.l2 = float(l1), float(l2)

    def penalty(self, param):
        """``l1 * sum|w| + l2 * sum w^2`` as a float."""
        return ops.regularization_penalty(param, self.l1, self.l2)

    def add_gradient(self, grad, param):
        """In place: ``grad += l1 * sign(w) + 2 * l2 * w``."""
        ops.regularize_grad(grad, param, self.l1, self.l2)

    def get_config(self):
        return {"l1": self.l1, "l2": self.l2}


class L1(L1L2):
    def __init__(self, l1=0.01):
        super().__init__(l1=l1)


class L2(L1L2):
    def __init__(self, l2=0.01):
        super().__init__(l2=l2)


def l1_l2(l1=0.01, l2=0.01):
    """Keras's ``regularizers.l1_l2``: both penalties, each factor 0.01 by default."""
    return L1L2(l1, l2)


# Keras's lowercase spellings: ``kernel_regularizer=regularizers.l2(1e-4)``
l1, l2 = L1, L2


def get(identifier):
    """A regularizer from ``None``, an instance, ``"l1"`` / ``"l2"`` / ``"l1_l2"`` or a config dict."""
    if identifier is None or isinstance(identifier, L1L2):
        return identifier
    if isinstance(identifier, dict):
        return L1L2(**identifier["config"])
    named = {"l1": L1, "l2": L2, "l1_l2": l1_l2}
    if identifier in named:
        return named[identifier]()
    raise ValueError(f"unknown regularizer {identifier!r}; known: {sorted(named)}")


def serialize(regularizer):
    return None if regularizer is None else {"class_name": "L1L2", "config": regularizer.get_config()}
