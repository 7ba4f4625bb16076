"""What the router itself saw, read from the outside: its calibration over time (the state file it saves
every ``save_interval_s``) and its per-exchange decision lines (JSON logs). The replay never guesses
what the router estimated; it reads what the router logged."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from extproc.algorithm import CalibrationParams, Calibrator
from extproc.algorithm.calibration import CategoryState
from extproc.algorithm.calibration_state import parse_state


@dataclass(frozen=True, slots=True)
class RatioPoint:
    t_s: float
    category: str
    mean: float
    dev: float
    samples: int
    ratio: float  # c*: what routing used at that moment


def newest_snapshot(state_file: Path, params: CalibrationParams) -> dict[str, CategoryState]:
    """The most recently written replica's usable categories ({} before the first save or on a torn read)."""
    try:
        raw = state_file.read_bytes()
    except OSError:
        return {}
    replicas = parse_state(raw, params).replicas
    if not replicas:
        return {}
    return max(replicas.values(), key=lambda e: e.updated).categories


class CalibrationTimeline:
    """Samples the saved calibration; c* is recomputed with the router's own ``Calibrator``."""

    def __init__(self, state_file: Path, params: CalibrationParams) -> None:
        self.state_file = state_file
        self.params = params
        self.points: list[RatioPoint] = []
        self._last: dict[str, tuple[float, float, int]] = {}

    def poll(self, t_s: float) -> None:
        snapshot = newest_snapshot(self.state_file, self.params)
        if not snapshot:
            return
        cal = Calibrator(self.params)
        cal.load(snapshot)
        for name, st in cal.categories().items():
            key = (st.mean, st.dev, st.samples)
            if self._last.get(name) == key:
                continue  # unchanged since the last save: keep the series small
            self._last[name] = key
            self.points.append(RatioPoint(t_s, name, st.mean, st.dev, st.samples, cal.ratio(name)))

    async def run(self, clock: Callable[[], float], interval_s: float) -> None:
        while True:
            self.poll(clock())
            await asyncio.sleep(interval_s)

    def series(self, category: str) -> list[RatioPoint]:
        return [p for p in self.points if p.category == category]


def read_decisions(logs: Iterable[Path]) -> dict[str, dict[str, Any]]:
    """request_id -> the router's decision line (pool, reason, category, estimate, usage, error %)."""
    out: dict[str, dict[str, Any]] = {}
    for path in logs:
        try:
            lines = path.read_bytes().splitlines()
        except OSError:
            continue
        for line in lines:
            if not line.startswith(b"{"):
                continue
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(entry, dict) and entry.get("event") == "exchange" and entry.get("request_id"):
                out[str(entry["request_id"])] = entry
    return out
