"""The request record every workload source produces, and the container that says whether its arrival
times mean anything. The embedded stack's replay and the fleet simulator consume the same records, so
a trace behaves identically whether it drives real Envoy or the simulator."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One request: when it arrives (seconds from the start of the workload), its prompt and output
    sizes in tokens, and its content category (``None`` until a category mix assigns one)."""

    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    category: str | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class Trace:
    """Requests in arrival order. ``timed`` is False for sources without timestamps (a CDF, the
    synthetic trace): their arrivals are all 0 and must be re-timed before use. ``origin_s`` is the
    absolute time (Unix seconds) of arrival 0 when the source has one, so traces can be merged."""

    name: str
    requests: tuple[TraceRequest, ...]
    timed: bool
    origin_s: float | None = None

    def __len__(self) -> int:
        return len(self.requests)


def malformed(path: str | Path, line: int | None, message: str) -> ValueError:
    """The one error shape for bad input files: ``path:line: message`` so editors can jump to it."""
    where = f"{path}:{line}" if line is not None else str(path)
    return ValueError(f"{where}: {message}")


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise malformed(path, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def merge_by_arrival(name: str, traces: Sequence[Trace]) -> Trace:
    """Interleave timed traces on their absolute clocks (e.g. Azure code + conv into one stream)."""
    if not traces:
        raise ValueError("merge_by_arrival needs at least one trace")
    if any(not t.timed or t.origin_s is None for t in traces):
        raise ValueError("only traces with absolute timestamps can be merged")
    origin = min(t.origin_s for t in traces if t.origin_s is not None)
    shifted: list[TraceRequest] = []
    for t in traces:
        offset = (t.origin_s or 0.0) - origin
        shifted.extend(_shift(t.requests, offset))
    shifted.sort(key=lambda r: r.arrival_s)  # stable: ties keep the order of `traces`
    return Trace(name, tuple(shifted), timed=True, origin_s=origin)


def _shift(requests: Iterable[TraceRequest], offset: float) -> Iterable[TraceRequest]:
    for r in requests:
        yield TraceRequest(r.arrival_s + offset, r.prompt_tokens, r.output_tokens, r.category)
