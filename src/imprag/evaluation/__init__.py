"""Evaluation: pure metrics, the systems compared, the harness that scores them, and reports."""

from imprag.evaluation.harness import EvalError, evaluate
from imprag.evaluation.report import write_report
from imprag.evaluation.systems import (
    SYSTEMS,
    ClosedBook,
    ImplicitRetrieval,
    Prediction,
    RetrieveThenRead,
    System,
)

__all__ = [
    "SYSTEMS",
    "ClosedBook",
    "EvalError",
    "ImplicitRetrieval",
    "Prediction",
    "RetrieveThenRead",
    "System",
    "evaluate",
    "write_report",
]
