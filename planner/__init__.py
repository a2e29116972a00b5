"""planner: a deployment-planning decision tool for pruning transformer language models.

Importing this package touches no GPU, no NVML and no network; heavy modules are imported by the stages that
need them.
"""

import logging as _logging

from planner._version import __version__  # noqa: F401  (planner.__version__)

# transformers imports torchao (when installed) on every model load; torchao then warns that its CUDA-only kernels
# did not load and torch that its enums are registered twice: noise on a CPU host, not a problem of the run
for _name in ("torchao", "torch.utils._pytree"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)


def plan(goal, gpu=None, **kwargs):
    """The main job as a library call: the ranked plan document for `goal` on `gpu` (see planner.api.plan)."""
    from planner.api import plan as _plan

    return _plan(goal, gpu, **kwargs)


def save_plan(plan, path):
    """Write plan.json atomically (refuses to replace a file that is not a plan); returns the path."""
    from planner.decide.plan import save_plan as _save

    return _save(plan, path)
