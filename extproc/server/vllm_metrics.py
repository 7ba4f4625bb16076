"""Read a vLLM engine's load out of its Prometheus text exposition, fast and without ever raising.

A vLLM ``/metrics`` page is tens of kilobytes (mostly histograms) and the router reads one per
endpoint every scrape interval, so it is not parsed line by line in Python: the three series the
router needs are found with ``bytes.find`` (C speed; two scans, running and waiting share a prefix) and only their
lines are parsed. Series names:
``vllm:num_requests_running``, ``vllm:num_requests_waiting`` and ``vllm:kv_cache_usage_perc`` (a
fraction, 0..1, despite the name); ``vllm:gpu_cache_usage_perc``, its deprecated predecessor (removed
in recent vLLM), is read when the new one is absent. Several label sets (one per engine of a
data-parallel server) are summed for the queues; KV use takes the fullest engine.
"""

from __future__ import annotations

import math

from extproc.algorithm.pressure import EngineLoad

QUEUES = b"vllm:num_requests_"  # running and waiting share it: one scan finds both
RUNNING, WAITING = b"running", b"waiting"
KV_USAGE = b"vllm:kv_cache_usage_perc"
KV_USAGE_DEPRECATED = b"vllm:gpu_cache_usage_perc"
_AFTER_NAME = frozenset(b"{ \t")


def sample_values(text: bytes, name: bytes) -> list[float]:
    """Values of every sample of the series ``name`` (any labels); malformed lines are skipped."""
    return _samples(text, name, (b"",))[b""]


def _samples(text: bytes, prefix: bytes, suffixes: tuple[bytes, ...]) -> dict[bytes, list[float]]:
    """Values of the series ``prefix + suffix`` for each suffix, in one scan for the prefix."""
    out: dict[bytes, list[float]] = {s: [] for s in suffixes}
    start, n = 0, len(prefix)
    while True:
        pos = text.find(prefix, start)
        if pos < 0:
            return out
        start = pos + n
        if pos > 0 and text[pos - 1] not in b"\n\r":
            continue  # inside another line (a comment, a label value, a longer name)
        end = text.find(b"\n", start)
        line = text[start : end if end >= 0 else len(text)]
        for suffix in suffixes:
            if line.startswith(suffix):
                value = _value(line[len(suffix) :])
                if value is not None:
                    out[suffix].append(value)
                break


def _value(rest: bytes) -> float | None:
    """The sample value of a line, given what follows the metric name: ``{labels} value [ts]``."""
    if not rest or rest[0] not in _AFTER_NAME:
        return None
    if rest[0] == 0x7B:  # "{": skip the label set, honouring quoted values with escapes
        i, quoted = 1, False
        while i < len(rest):
            c = rest[i]
            if quoted and c == 0x5C:  # backslash escape inside a label value
                i += 2
                continue
            if c == 0x22:
                quoted = not quoted
            elif c == 0x7D and not quoted:
                break
            i += 1
        else:
            return None
        rest = rest[i + 1 :]
    fields = rest.split()
    if not fields or len(fields) > 2:
        return None
    try:
        value = float(fields[0])
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0.0 else None


def parse_engine_load(text: bytes) -> EngineLoad | None:
    """The engine's load, or None when the page has neither queue series (not a vLLM engine)."""
    queues = _samples(text, QUEUES, (RUNNING, WAITING))
    running, waiting = queues[RUNNING], queues[WAITING]
    if not running and not waiting:
        return None
    kv = sample_values(text, KV_USAGE) or sample_values(text, KV_USAGE_DEPRECATED)
    return EngineLoad(sum(running), sum(waiting), min(1.0, max(kv, default=0.0)))
