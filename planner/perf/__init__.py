"""The performance model: what the serving stack turns a model's work into.

Modules: runtimes (profiles/runtimes/*.yaml: overheads, achievable rates, kernel table), serving (the step model
on top of planner.profile.roofline), calibration (this host's figures from measurements, stored with provenance).
"""
