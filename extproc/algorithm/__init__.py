"""The routing algorithm, free of gRPC and I/O: categorise, estimate, calibrate, decide, count.

The ext_proc server and the fleet simulator both drive `BudgetRouter` through the same two calls
(``route`` -> ``Ticket``, ``finish(ticket, Outcome)``), so the simulated router is the production
router, sampling and pool leases included.
"""

from extproc.algorithm.budget import BudgetParams, Estimate
from extproc.algorithm.calibration import CalibrationParams, Calibrator, Observation
from extproc.algorithm.categories import Categorizer, CategoryParams
from extproc.algorithm.dispatch import Decision, DispatchPolicy, decide
from extproc.algorithm.pressure import CapacityParams, InFlightPressure, LivePressure, PressureSource
from extproc.algorithm.request_shape import RequestShape, ShapeError, shape_from_body
from extproc.algorithm.router import BudgetRouter, Learned, Outcome, Ticket

__all__ = [
    "BudgetParams",
    "BudgetRouter",
    "CalibrationParams",
    "Calibrator",
    "CapacityParams",
    "Categorizer",
    "CategoryParams",
    "Decision",
    "DispatchPolicy",
    "Estimate",
    "InFlightPressure",
    "Learned",
    "LivePressure",
    "Observation",
    "Outcome",
    "PressureSource",
    "RequestShape",
    "ShapeError",
    "Ticket",
    "decide",
    "shape_from_body",
]
