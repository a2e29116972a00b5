"""The pre-launch gate: a policy of thresholds checked against results.json (`plan gate`).

    report = check_gate(load_results("results.json"), load_policy("gate.yaml"))
    print(to_markdown(report)); sys.exit(0 if report.passed else 1)
"""

from planner.gate.check import GateReport, GateRow, check_gate
from planner.gate.policy import GatePolicy, load_policy
from planner.gate.summary import to_markdown, verdict_line

__all__ = ["GatePolicy", "GateReport", "GateRow", "check_gate", "load_policy", "to_markdown", "verdict_line"]
