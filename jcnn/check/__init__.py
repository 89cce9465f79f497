"""Is a hand-written gradient right? `check_vjp` checks one function's `jax.custom_vjp` rules,
`check_model` every layer of a model; both raise `CheckFailed` with their report.

Modules: `vjp` (check_vjp), `model` (check_model), `rows` (the comparisons, one function per
kind of report row), `compare` (an array against its oracle, and where they differ),
`finite_differences` (central differences and the Taylor-remainder test), `report` (the
report and the error), `grid` (the configurations `jcnn verify` runs every op over).
"""
from jcnn.check.model import LayerResult, ModelReport, check_model
from jcnn.check.report import CheckFailed, Report, Row
from jcnn.check.vjp import MAX_JACOBIAN_ENTRIES, PRECISION, check_vjp, kinked

__all__ = ["check_vjp", "check_model", "kinked", "CheckFailed", "Report", "Row", "ModelReport",
           "LayerResult", "PRECISION", "MAX_JACOBIAN_ENTRIES"]
