"""Optimizers with Keras's names, defaults and update rules; each update runs in place in one kernel.

An optimizer is handed the model's trainable parameters and their gradients, in the same order
every step, through :meth:`Optimizer.apply_gradients`.  Its slots (velocities, moments) are created
on the first call, one per parameter, on the active backend.  ``learning_rate`` may be a number or a
schedule from :mod:`minidl.schedules`, evaluated at the step count before the update.

Every setting is checked when the optimizer is made (and a schedule's rate at every step), so a
setting that can only produce NaN weights (an infinite or negative rate, ``beta_1 = 1``, ``rho = 2``)
is refused before any update.  An optimizer instance belongs to one model: its slots hold that
model's moments, so compiling it into a second model is refused (see :meth:`Optimizer.attach`).
"""

import warnings
import weakref

import numpy as np

from minidl import schedules
from minidl.backend import ops
from minidl.validation import require_fraction, require_positive


def pick_learning_rate(owner, learning_rate, lr, default):
    """``learning_rate``, or the deprecated alias ``lr`` (with a ``DeprecationWarning``), or ``default``."""
    if lr is None:
        return default if learning_rate is None else learning_rate
    if learning_rate is not None:
        raise TypeError(f"{owner}: got both learning_rate={learning_rate!r} and its deprecated alias "
                        f"lr={lr!r}; give only learning_rate")
    warnings.warn(f"{owner}: lr is deprecated, use learning_rate", DeprecationWarning, stacklevel=4)
    return lr


class Optimizer:
    slot_names = ()
    full_batch = False
    default_learning_rate = 0.001

    def __init__(self, learning_rate=None, lr=None):
        self.learning_rate = pick_learning_rate(type(self).__name__, learning_rate, lr,
                                                self.default_learning_rate)
        self.iterations = 0
        self.slots = []
        self.model_ref = None

    @property
    def learning_rate(self):
        """A positive finite number, or a schedule (called with the step count)."""
        return self._learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        if not callable(value):
            value = require_positive(type(self).__name__, "learning_rate", value)
        self._learning_rate = value

    def current_learning_rate(self):
        """The learning rate of the next update (a schedule is evaluated at ``iterations``; a value
        that is not a positive finite number raises ``ValueError`` before any update)."""
        if not callable(self.learning_rate):
            return self.learning_rate
        value = self.learning_rate(self.iterations)
        try:
            return require_positive(type(self).__name__, "learning_rate", value)
        except ValueError:
            raise ValueError(f"{type(self).__name__}: the schedule {type(self.learning_rate).__name__} "
                             f"gave learning_rate {value!r} at step {self.iterations}; it must be a "
                             f"positive finite number") from None

    def attach(self, model):
        """Make this optimizer ``model``'s and return it.  Its slots hold one model's moments, so an
        optimizer still compiled into another live model is refused (give each model its own)."""
        owner = self.model_ref() if self.model_ref is not None else None
        if owner is not None and owner is not model and owner.optimizer is self:
            raise ValueError(f"this {type(self).__name__} instance is already compiled into model "
                             f"{owner.name!r}; its slots hold that model's state, so give model "
                             f"{model.name!r} its own optimizer, e.g. "
                             f"optimizers.{type(self).__name__}(**optimizer.get_config())")
        self.model_ref = weakref.ref(model)
        return self

    def apply_gradients(self, params_and_grads):
        """Update every parameter in place from its gradient, then count one step.  The slots,
        the learning rate and every shape are checked before the first parameter changes."""
        params_and_grads = list(params_and_grads)
        if not self.slots:
            self.slots = [{name: ops.zeros_like(param) for name in self.slot_names}
                          for param, _ in params_and_grads]
        self.check_slots_fit(params_and_grads)
        lr = self.current_learning_rate()
        for (param, grad), slot in zip(params_and_grads, self.slots):
            self.update(param, grad, slot, lr)
        self.iterations += 1
        self.commit_layer_states()

    def commit_layer_states(self):
        """After a successful update, the model's layers commit the non-trainable state their last
        training forward pass computed (BatchNormalization's moving statistics): a step that fails
        before its update (a non-finite gradient) leaves that state as it was too."""
        model = self.model_ref() if self.model_ref is not None else None
        if model is not None:
            for layer in model.layers:
                layer.apply_state_updates()

    def check_slots_fit(self, params_and_grads):
        if len(self.slots) != len(params_and_grads):
            raise ValueError(f"{type(self).__name__} was built for {len(self.slots)} parameters, "
                             f"got {len(params_and_grads)}")
        for index, ((param, grad), slot) in enumerate(zip(params_and_grads, self.slots)):
            shapes = {tuple(param.shape), tuple(grad.shape)} | {tuple(a.shape) for a in slot.values()}
            if len(shapes) != 1:
                raise ValueError(f"{type(self).__name__}: parameter {index} has shape {tuple(param.shape)}, "
                                 f"its gradient {tuple(grad.shape)} and its slots "
                                 f"{[tuple(a.shape) for a in slot.values()]}; nothing was updated")

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
    default_learning_rate = 0.01

    def __init__(self, learning_rate=None, momentum=0.0, nesterov=False, lr=None):
        """``learning_rate`` defaults to 0.01; ``lr`` is its deprecated alias."""
        super().__init__(learning_rate, lr)
        self.momentum = require_fraction(type(self).__name__, "momentum", momentum)
        self.nesterov = bool(nesterov)

    def update(self, param, grad, slot, lr):
        ops.sgd_update(param, grad, slot["velocity"], lr, self.momentum, self.nesterov)

    def hyperparameters(self):
        return {"momentum": self.momentum, "nesterov": self.nesterov}


class GD(SGD):
    """Full-batch gradient descent: ``w = w - lr * dL/dw`` with the gradient of the whole training
    set, so ``fit`` uses one batch of every sample (``batch_size`` is ignored)."""

    full_batch = True

    def __init__(self, learning_rate=None, lr=None):
        """``learning_rate`` defaults to 0.01; ``lr`` is its deprecated alias."""
        super().__init__(learning_rate, lr=lr)

    def hyperparameters(self):
        return {}


class Adam(Optimizer):
    """Adam with Keras's bias correction folded into the step size::

        m = b1 m + (1 - b1) g,   v = b2 v + (1 - b2) g^2
        w = w - lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + epsilon)
    """

    slot_names = ("m", "v")

    def __init__(self, learning_rate=None, beta_1=0.9, beta_2=0.999, epsilon=1e-7, lr=None):
        """``learning_rate`` defaults to 0.001; ``lr`` is its deprecated alias.  ``beta_1`` and
        ``beta_2`` must be in [0, 1) (1 makes the bias correction divide by zero), ``epsilon`` > 0."""
        super().__init__(learning_rate, lr)
        self.beta_1 = require_fraction(type(self).__name__, "beta_1", beta_1)
        self.beta_2 = require_fraction(type(self).__name__, "beta_2", beta_2)
        self.epsilon = require_positive(type(self).__name__, "epsilon", epsilon)

    def update(self, param, grad, slot, lr):
        ops.adam_update(param, grad, slot["m"], slot["v"], lr, self.beta_1, self.beta_2,
                        self.epsilon, self.iterations + 1)

    def hyperparameters(self):
        return {"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon}


class RMSprop(Optimizer):
    """RMSprop as in Keras: ``s = rho s + (1 - rho) g^2``, ``w = w - lr * g / sqrt(s + epsilon)``."""

    slot_names = ("mean_square",)

    def __init__(self, learning_rate=None, rho=0.9, epsilon=1e-7, lr=None):
        """``learning_rate`` defaults to 0.001; ``lr`` is its deprecated alias.  ``rho`` in [0, 1),
        ``epsilon`` > 0."""
        super().__init__(learning_rate, lr)
        self.rho = require_fraction(type(self).__name__, "rho", rho)
        self.epsilon = require_positive(type(self).__name__, "epsilon", epsilon)

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
