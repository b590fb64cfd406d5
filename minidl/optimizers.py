"""Optimizers with Keras's names, defaults and update rules; each update runs in place in one kernel.

An optimizer is handed the model's trainable parameters and their gradients, in the same order
every step, through :meth:`Optimizer.apply_gradients`.  Its slots (velocities, moments) are created
on the first call, one per parameter, on the active backend.  ``learning_rate`` may be a number or a
schedule from :mod:`minidl.schedules`, evaluated at the step count before the update.
"""

import numpy as np

from minidl import schedules
from minidl.backend import ops


class Optimizer:
    slot_names = ()
    full_batch = False

    def __init__(self, learning_rate):
        if not callable(learning_rate) and not learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {learning_rate!r}")
        self.learning_rate = learning_rate
        self.iterations = 0
        self.slots = []

    def current_learning_rate(self):
        """The learning rate of the next update (a schedule is evaluated at ``iterations``)."""
        if callable(self.learning_rate):
            return float(self.learning_rate(self.iterations))
        return float(self.learning_rate)

    def apply_gradients(self, params_and_grads):
        """Update every parameter in place from its gradient, then count one step."""
        params_and_grads = list(params_and_grads)
        if not self.slots:
            self.slots = [{name: ops.zeros_like(param) for name in self.slot_names}
                          for param, _ in params_and_grads]
        if len(self.slots) != len(params_and_grads):
            raise ValueError(f"{type(self).__name__} was built for {len(self.slots)} parameters, "
                             f"got {len(params_and_grads)}")
        lr = self.current_learning_rate()
        for (param, grad), slot in zip(params_and_grads, self.slots):
            self.update(param, grad, slot, lr)
        self.iterations += 1

    def update(self, param, grad, slot, lr):
        raise NotImplementedError

    def get_state(self):
        """Step count and slot arrays (host copies), for checkpoints."""
        return {"iterations": self.iterations,
                "slots": [{name: ops.to_host(array).copy() for name, array in slot.items()}
                          for slot in self.slots]}

    def set_state(self, state):
        self.iterations = int(state["iterations"])
        self.slots = [{name: ops.to_device(np.asarray(array)) for name, array in slot.items()}
                      for slot in state["slots"]]

    def hyperparameters(self):
        return {}

    def get_config(self):
        lr = self.learning_rate
        return {"learning_rate": schedules.serialize(lr) if callable(lr) else lr,
                **self.hyperparameters()}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config["learning_rate"], dict):
            config["learning_rate"] = schedules.deserialize(config["learning_rate"])
        return cls(**config)


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, as in Keras::

        v = momentum * v - lr * g
        w = w + v                         (classical momentum; plain SGD when momentum = 0)
        w = w + momentum * v - lr * g     (nesterov=True)
    """

    slot_names = ("velocity",)

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False):
        super().__init__(learning_rate)
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)

    def update(self, param, grad, slot, lr):
        ops.sgd_update(param, grad, slot["velocity"], lr, self.momentum, self.nesterov)

    def hyperparameters(self):
        return {"momentum": self.momentum, "nesterov": self.nesterov}


class GD(SGD):
    """Full-batch gradient descent: ``w = w - lr * dL/dw`` with the gradient of the whole training
    set, so ``fit`` uses one batch of every sample (``batch_size`` is ignored)."""

    full_batch = True

    def __init__(self, learning_rate=0.01):
        super().__init__(learning_rate)

    def hyperparameters(self):
        return {}


class Adam(Optimizer):
    """Adam with Keras's bias correction folded into the step size::

        m = b1 m + (1 - b1) g,   v = b2 v + (1 - b2) g^2
        w = w - lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + epsilon)
    """

    slot_names = ("m", "v")

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
        super().__init__(learning_rate)
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)

    def update(self, param, grad, slot, lr):
        ops.adam_update(param, grad, slot["m"], slot["v"], lr, self.beta_1, self.beta_2,
                        self.epsilon, self.iterations + 1)

    def hyperparameters(self):
        return {"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon}


class RMSprop(Optimizer):
    """RMSprop as in Keras: ``s = rho s + (1 - rho) g^2``, ``w = w - lr * g / sqrt(s + epsilon)``."""

    slot_names = ("mean_square",)

    def __init__(self, learning_rate=0.001, rho=0.9, epsilon=1e-7):
        super().__init__(learning_rate)
        self.rho, self.epsilon = float(rho), float(epsilon)

    def update(self, param, grad, slot, lr):
        ops.rmsprop_update(param, grad, slot["mean_square"], lr, self.rho, self.epsilon)

    def hyperparameters(self):
        return {"rho": self.rho, "epsilon": self.epsilon}


OPTIMIZERS = {"sgd": SGD, "gd": GD, "adam": Adam, "rmsprop": RMSprop}


def get(identifier):
    """An optimizer from an instance or a Keras alias (``"sgd"``, ``"adam"``, ``"rmsprop"``, ``"gd"``)."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in OPTIMIZERS:
        return OPTIMIZERS[identifier.lower()]()
    raise ValueError(f"unknown optimizer {identifier!r}; known aliases: {sorted(OPTIMIZERS)}")


def serialize(optimizer):
    return {"class_name": type(optimizer).__name__, "config": optimizer.get_config()}


def deserialize(config):
    classes = {cls.__name__: cls for cls in OPTIMIZERS.values()}
    return classes[config["class_name"]].from_config(config["config"])
