"""Learning-rate schedules, passed as ``learning_rate=`` to any optimizer.

A schedule is called with the optimizer's step count ``t`` (0 for the first update) and returns the
learning rate for that update.  Every argument is checked when the schedule is made, and the
optimizer checks each rate a schedule returns (:meth:`minidl.optimizers.Optimizer.current_learning_rate`).
"""

import math

from minidl.validation import require_positive, require_real


class LearningRateSchedule:
    def __call__(self, step):
        raise NotImplementedError

    def get_config(self):
        return dict(vars(self))


class ExponentialDecay(LearningRateSchedule):
    """``lr(t) = lr0 * rate^(t / decay_steps)``; with ``staircase`` the exponent is floored."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False):
        require_positive("ExponentialDecay", "initial_learning_rate", initial_learning_rate)
        require_positive("ExponentialDecay", "decay_steps", decay_steps)
        require_positive("ExponentialDecay", "decay_rate", decay_rate)
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps, self.decay_rate, self.staircase = decay_steps, decay_rate, staircase

    def __call__(self, step):
        exponent = step / self.decay_steps
        if self.staircase:
            exponent = math.floor(exponent)
        return self.initial_learning_rate * self.decay_rate**exponent


class StepDecay(LearningRateSchedule):
    """``lr(t) = lr0 * factor^floor(t / step_size)``: drop by ``factor`` every ``step_size`` steps."""

    def __init__(self, initial_learning_rate, step_size, factor=0.1):
        require_positive("StepDecay", "initial_learning_rate", initial_learning_rate)
        require_positive("StepDecay", "step_size", step_size)
        require_positive("StepDecay", "factor", factor)
        self.initial_learning_rate, self.step_size, self.factor = initial_learning_rate, step_size, factor

    def __call__(self, step):
        return self.initial_learning_rate * self.factor ** (step // self.step_size)


class PiecewiseConstantDecay(LearningRateSchedule):
    """``values[i]`` while ``boundaries[i-1] < t <= boundaries[i]`` (Keras's rule)."""

    def __init__(self, boundaries, values):
        if len(values) != len(boundaries) + 1:
            raise ValueError(f"need len(values) == len(boundaries) + 1, got {len(values)} and "
                             f"{len(boundaries)}")
        for value in values:
            require_positive("PiecewiseConstantDecay", "every value", value)
        for boundary in boundaries:
            require_real("PiecewiseConstantDecay", "every boundary", boundary)
        self.boundaries, self.values = list(boundaries), list(values)

    def __call__(self, step):
        for boundary, value in zip(self.boundaries, self.values):
            if step <= boundary:
                return value
        return self.values[-1]


class CosineDecay(LearningRateSchedule):
    """``lr(t) = lr0 * ((1 - alpha) * (1 + cos(pi * min(t, T) / T)) / 2 + alpha)``, ``T = decay_steps``."""

    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0):
        require_positive("CosineDecay", "initial_learning_rate", initial_learning_rate)
        require_positive("CosineDecay", "decay_steps", decay_steps)
        if not 0 <= require_real("CosineDecay", "alpha", alpha) <= 1:
            raise ValueError(f"CosineDecay: alpha must be in [0, 1], got {alpha!r}")
        self.initial_learning_rate, self.decay_steps, self.alpha = initial_learning_rate, decay_steps, alpha

    def __call__(self, step):
        progress = min(step, self.decay_steps) / self.decay_steps
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return self.initial_learning_rate * ((1 - self.alpha) * cosine + self.alpha)


SCHEDULES = {cls.__name__: cls for cls in
             (ExponentialDecay, StepDecay, PiecewiseConstantDecay, CosineDecay)}


def serialize(schedule):
    return {"class_name": type(schedule).__name__, "config": schedule.get_config()}


def deserialize(config):
    return SCHEDULES[config["class_name"]](**config["config"])
