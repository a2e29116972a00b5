"""Quality risk measured on the model itself (issue 15).

- `sensitivity.probe(loaded_model, steps)`: each candidate step applied one-shot to a copy of the model and measured
  on a short held-out slice (perplexity, top-1 agreement with dense), cached on disk.
- `recovery.factor_for(method, steps, tokens, params)`: how much of that one-shot loss a recovery leaves
  (after-recovery increase = one-shot increase x factor), from sourced priors, updated from every `plan run`
  (`recovery.update_factor(results, results.json)`).
"""

from planner.probe.sensitivity import ProbeReport, StepProbe, probe  # noqa: F401

__all__ = ["ProbeReport", "StepProbe", "probe"]
