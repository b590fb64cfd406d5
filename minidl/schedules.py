"""Learning-rate schedules, passed as ``learning_rate=`` to any optimizer.

A schedule is called with the optimizer's step count ``t`` (0 for the first update) and returns the
learning rate for that update.
"""

import math


def require_positive(name, value):
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")


class LearningRateSchedule:
    def __call__(self, step):
        raise NotImplementedError

    def get_config(self):
        return dict(vars(self))


class ExponentialDecay(LearningRateSchedule):
    """``lr(t) = lr0 * rate^(t / decay_steps)``; with ``staircase`` the exponent is floored."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False):
        require_positive("decay_steps", decay_steps)
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
        require_positive("step_size", step_size)
        self.initial_learning_rate, self.step_size, self.factor = initial_learning_rate, step_size, factor

    def __call__(self, step):
        return self.initial_learning_rate * self.factor ** (step // self.step_size)


class PiecewiseConstantDecay(LearningRateSchedule):
    """``values[i]`` while ``boundaries[i-1] < t <= boundaries[i]`` (Keras's rule)."""

    def __init__(self, boundaries, values):
        if len(values) != len(boundaries) + 1:
            raise ValueError(f"need len(values) == len(boundaries) + 1, got {len(values)} and "
                             f"{len(boundaries)}")
        self.boundaries, self.values = list(boundaries), list(values)

    def __call__(self, step):
        for boundary, value in zip(self.boundaries, self.values):
            if step <= boundary:
                return value
        return self.values[-1]


class CosineDecay(LearningRateSchedule):
    """``lr(t) = lr0 * ((1 - alpha) * (1 + cos(pi * min(t, T) / T)) / 2 + alpha)``, ``T = decay_steps``."""

    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0):
        require_positive("decay_steps", decay_steps)
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
