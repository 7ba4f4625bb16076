"""Reader for the Azure LLM inference trace CSV format (``TIMESTAMP, ContextTokens, GeneratedTokens``).

The 2023 files carry naive timestamps with 7 fractional digits (``2023-11-16 18:17:03.9799600``), which
``datetime.fromisoformat`` rejects before Python 3.11 and which lose precision as floats since the epoch.
We therefore count in integer 100 ns ticks and keep one float origin per file. The 2024 files append a
``+00:00`` offset and use fewer fractional digits; both are accepted (any offset is applied).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from extproc.workload.trace import Trace, TraceRequest, malformed, read_text

HEADER = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
_TICKS_PER_S = 10_000_000
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()


def _date_ticks(date: str, cache: dict[str, int]) -> int:
    ticks = cache.get(date)
    if ticks is None:
        days = dt.date.fromisoformat(date).toordinal() - _EPOCH_ORDINAL
        ticks = cache[date] = days * 86_400 * _TICKS_PER_S
    return ticks


def _offset_ticks(offset: str) -> int:
    sign = -1 if offset[0] == "-" else 1
    hours, _, minutes = offset[1:].partition(":")
    return sign * (int(hours) * 3600 + int(minutes or 0) * 60) * _TICKS_PER_S


def parse_timestamp(text: str, cache: dict[str, int] | None = None) -> int:
    """``YYYY-MM-DD HH:MM:SS[.fffffff][+HH:MM]`` to 100 ns ticks since the Unix epoch (UTC)."""
    date, sep, clock = text.strip().partition(" ")
    if not sep:
        date, sep, clock = text.strip().partition("T")
    offset = 0
    for mark in ("+", "-", "Z"):
        pos = clock.find(mark)
        if pos > 0:
            if mark != "Z":
                offset = _offset_ticks(clock[pos:])
            clock = clock[:pos]
            break
    hms, _, frac = clock.partition(".")
    parts = hms.split(":")
    if len(parts) != 3 or len(parts[0]) != 2 or (frac and not frac.isdigit()):
        raise ValueError(f"bad timestamp {text!r}")
    h, m, s = (int(p) for p in parts)
    if h > 23 or m > 59 or s > 60:
        raise ValueError(f"bad timestamp {text!r}")
    frac_ticks = int(frac[:7].ljust(7, "0")) if frac else 0
    day = _date_ticks(date, cache if cache is not None else {})
    return day + ((h * 60 + m) * 60 + s) * _TICKS_PER_S + frac_ticks - offset


def _tokens(field: str, column: str, minimum: int) -> int:
    value = int(field)
    if value < minimum:
        raise ValueError(f"{column} must be >= {minimum}, got {value}")
    return value


def load_azure_csv(path: str | Path, *, category: str | None = None, name: str | None = None) -> Trace:
    """Load one Azure trace file. Rows keep file order, re-sorted (stably) by time only if the file is
    out of order. ``category`` tags every row (the code trace is code traffic)."""
    path = Path(path)
    lines = read_text(path).splitlines()
    if not lines or tuple(h.strip() for h in lines[0].split(",")) != HEADER:
        got = lines[0][:80] if lines else "an empty file"
        raise malformed(path, 1, f"expected header {','.join(HEADER)}, got {got!r}")
    cache: dict[str, int] = {}
    ticks: list[int] = []
    prompts: list[int] = []
    outputs: list[int] = []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split(",")
        if len(fields) != 3:
            raise malformed(path, lineno, f"expected 3 comma-separated fields, got {len(fields)}: {line[:80]!r}")
        try:
            ticks.append(parse_timestamp(fields[0], cache))
            prompts.append(_tokens(fields[1], "ContextTokens", 1))
            outputs.append(_tokens(fields[2], "GeneratedTokens", 0))
        except ValueError as exc:
            raise malformed(path, lineno, f"{exc} in {line[:80]!r}") from None
    if not ticks:
        raise malformed(path, None, "no data rows")
    order = sorted(range(len(ticks)), key=ticks.__getitem__)
    t0 = ticks[order[0]]
    requests = tuple(TraceRequest((ticks[i] - t0) / _TICKS_PER_S, prompts[i], outputs[i], category) for i in order)
    return Trace(name or path.stem, requests, timed=True, origin_s=t0 / _TICKS_PER_S)
