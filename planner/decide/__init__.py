"""The decision core: rules as data (rules/*.yaml) fire on facts, candidates are projected to the target GPU with the
roofline model, rated, filtered by the quality budget and ranked into plan.json.

- facts.py       the facts a rule may name (registry: type, source, meaning)
- conditions.py  the condition language (eq ne lt le gt ge in not_in, all any not), parsed, never eval'd
- rules.py       the rule model, its loader and validation errors (file + rule id)
- candidates.py  candidates from the rules that fired (granularity x criterion x ratio x recovery)
- predict.py     each candidate's goal figure on the GPU, from the shapes the GPU will actually run
- engine.py      decide(): fire, predict, judge, rank
- plan.py        the Plan document: Plan, Candidate, load_plan, save_plan
"""

from planner.decide.plan import Candidate, Plan, load_plan, save_plan

__all__ = ["Candidate", "Plan", "load_plan", "save_plan"]
