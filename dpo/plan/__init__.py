"""Pre-flight plan of a DPO run from a model's config: exact parameter count and memory estimate (no weights)."""

from dpo.plan.options import PlanOptions
from dpo.plan.planner import Plan, build_plan

__all__ = ["Plan", "PlanOptions", "build_plan"]
