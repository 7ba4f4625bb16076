"""The routing algorithm, free of gRPC and I/O: categorise, estimate, calibrate, decide.

The ext_proc server and the fleet simulator both drive `BudgetRouter`, so the simulated router is
the production router.
"""

from extproc.algorithm.budget import BudgetParams, Estimate
from extproc.algorithm.calibration import CalibrationParams, Calibrator, Observation
from extproc.algorithm.categories import Categorizer, CategoryParams
from extproc.algorithm.dispatch import Decision, DispatchPolicy, decide
from extproc.algorithm.request_shape import RequestShape, ShapeError, shape_from_body
from extproc.algorithm.router import BudgetRouter

__all__ = [
    "BudgetParams",
    "BudgetRouter",
    "CalibrationParams",
    "Calibrator",
    "Categorizer",
    "CategoryParams",
    "Decision",
    "DispatchPolicy",
    "Estimate",
    "Observation",
    "RequestShape",
    "ShapeError",
    "decide",
    "shape_from_body",
]
