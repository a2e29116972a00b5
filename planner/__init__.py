"""planner: a deployment-planning decision tool for pruning transformer language models.

Importing this package touches no GPU, no NVML and no network; heavy modules are imported by the stages that
need them.
"""

__version__ = "0.1.0"
