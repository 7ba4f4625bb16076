"""Reader for request traces as JSON Lines: one object per line,
``{"arrival_s"?: float, "prompt_tokens": int, "output_tokens": int, "category"?: str}``.

Either every line has ``arrival_s`` (a timed trace, kept as given but re-sorted stably if out of order) or none does
(an untimed trace that must be re-timed). Blank lines and lines starting with ``#`` are skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

from extproc.workload.trace import Trace, TraceRequest, malformed, read_text

_KEYS = frozenset({"arrival_s", "prompt_tokens", "output_tokens", "category"})


def _int_field(obj: dict, key: str, minimum: int) -> int:
    if key not in obj:
        raise ValueError(f'missing "{key}"')
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise ValueError(f'"{key}" must be an integer, got {value!r}')
    if value < minimum:
        raise ValueError(f'"{key}" must be >= {minimum}, got {value!r}')
    return int(value)


def _parse_line(line: str) -> TraceRequest:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    unknown = set(obj) - _KEYS
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}; allowed: {sorted(_KEYS)}")
    arrival = obj.get("arrival_s", -1.0)
    if (
        isinstance(arrival, bool)
        or not isinstance(arrival, int | float)
        or ("arrival_s" in obj and not 0.0 <= arrival < float("inf"))
    ):
        raise ValueError(f'"arrival_s" must be a finite number >= 0, got {arrival!r}')
    category = obj.get("category")
    if category is not None and (not isinstance(category, str) or not category):
        raise ValueError(f'"category" must be a non-empty string, got {category!r}')
    return TraceRequest(
        float(arrival), _int_field(obj, "prompt_tokens", 1), _int_field(obj, "output_tokens", 0), category
    )


def load_jsonl(path: str | Path, *, name: str | None = None) -> Trace:
    path = Path(path)
    requests: list[TraceRequest] = []
    timed_lines: list[bool] = []
    lines = read_text(path).splitlines()
    for lineno, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            request = _parse_line(stripped)
        except ValueError as exc:
            raise malformed(path, lineno, str(exc)) from None
        has_arrival = request.arrival_s >= 0.0
        if timed_lines and has_arrival != timed_lines[0]:
            raise malformed(path, lineno, '"arrival_s" must be on every line or on none')
        timed_lines.append(has_arrival)
        requests.append(request)
    if not requests:
        raise malformed(path, None, "no requests")
    timed = timed_lines[0]
    if timed:
        requests.sort(key=lambda r: r.arrival_s)
    else:
        requests = [TraceRequest(0.0, r.prompt_tokens, r.output_tokens, r.category) for r in requests]
    return Trace(name or path.stem, tuple(requests), timed=timed, origin_s=None)
