"""Structured logs: a JSON-lines formatter for every router log line, and one line per exchange.

The decision line is written when the exchange ends, so it carries the decision *and* its outcome
(status, usage, estimate error) together with the trace id that links it to the span.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

from extproc.server.events import ExchangeRecord

DECISION_LOGGER = "budget_router.decisions"
RECORD_FIELDS = (
    "method", "path", "endpoint", "pool", "reason", "detail", "category", "model", "text_bytes", "body_bytes",
    "estimated_prompt_tokens", "estimated_total_tokens", "ratio", "output_reserve", "output_defaulted",
    "stream", "include_usage_injected", "spilled", "short_pressure", "long_pressure", "pressure_source",
    "status", "attempts", "served_pool", "usage_source", "prompt_tokens", "completion_tokens", "observation",
    "estimate_error_pct", "must_read", "context_truncated", "engine_count",
)  # fmt: skip


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then any ``extra={"fields": {...}}``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def use_json_lines(level: str = "INFO") -> None:
    """Switch every root handler to JSON lines (adding a stderr handler if there is none)."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
        root.setLevel(level.upper())
    for handler in root.handlers:
        handler.setFormatter(JsonLinesFormatter())


def decision_fields(record: ExchangeRecord, trace_id: str, request_id: str) -> dict[str, Any]:
    fields: dict[str, Any] = {"event": "exchange", "trace_id": trace_id, "request_id": request_id}
    for name in RECORD_FIELDS:
        fields[name] = getattr(record, name)
    fields["processing_us"] = round(sum(record.phase_seconds.values()) * 1e6, 1)
    fields["engine_count_ms"] = round(record.engine_count_s * 1e3, 3)  # the wait for the engine's count
    return fields


class DecisionLog:
    def __init__(self, json_lines: bool, logger: logging.Logger | None = None) -> None:
        self.json_lines = json_lines
        self.log = logger or logging.getLogger(DECISION_LOGGER)

    def finished(self, record: ExchangeRecord, trace_id: str, request_id: str) -> None:
        if not self.log.isEnabledFor(logging.INFO):
            return
        fields = decision_fields(record, trace_id, request_id)
        if self.json_lines:
            self.log.info("exchange", extra={"fields": fields})
        else:
            text = " ".join(f"{k}={v}" for k, v in fields.items() if v not in ("", None) and k != "event")
            self.log.info("exchange %s", text)
