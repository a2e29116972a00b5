"""Re-export of planner.docbase.Doc, the base of every profile document (kept for existing imports)."""

from planner.docbase import Doc

__all__ = ["Doc"]
