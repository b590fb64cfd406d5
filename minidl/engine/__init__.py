"""The plan: how a model's layers are computed, apart from what they compute.

Layers (:mod:`minidl.layers`) are the math, one plain ``forward`` and ``backward`` each.  The planner
(:func:`build_plan`) turns a model into a :class:`Plan` of steps; every speed-up is a named pass in
:mod:`minidl.engine.passes` that replaces some steps by faster ones with the same results, and
``compile(optimize=False)`` runs the plain plan on the same kernels.
"""

from minidl.engine.passes import DEFAULT_WORKSPACE_BYTES, PASSES, build_plan, enabled_passes
from minidl.engine.plan import LayerStep, Plan, Step

__all__ = ["DEFAULT_WORKSPACE_BYTES", "PASSES", "LayerStep", "Plan", "Step", "build_plan", "enabled_passes"]
