"""Every span attribute key and metric name the router emits, in one place.

Code, tests and docs/observability.md all use these constants, so a rename is one edit and a
dashboard never silently loses a series. GenAI keys follow the OpenTelemetry GenAI semantic
conventions; everything that is specific to this router lives under ``budget_router.``.
"""

from __future__ import annotations

from extproc.algorithm.endpoints import REGISTRY

PREFIX = "budget_router."
INSTRUMENTATION_SCOPE = "budget_router"

# -- span names ---------------------------------------------------------------------------------
SPAN_NAME = "budget_router.exchange"  # until the request is parsed; then "{operation} {model}"

# -- OTel semantic conventions (GenAI + HTTP) ---------------------------------------------------
GEN_AI_OPERATION = "gen_ai.operation.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_INPUT_MESSAGES = "gen_ai.input.messages"  # only with telemetry.capture_content
GEN_AI_PROVIDER = "gen_ai.provider.name"
HTTP_STATUS = "http.response.status_code"
URL_PATH = "url.path"

# Our endpoint names -> gen_ai.operation.name values, from the endpoint registry (a Responses API call is
# a chat operation; the endpoint attribute tells them apart).
OPERATIONS = {e.name: e.operation for e in REGISTRY.values()}
OTHER_ENDPOINT = "other"  # endpoint label of requests whose body was not parsed

# -- our span attributes ------------------------------------------------------------------------
POOL = PREFIX + "pool"
ENDPOINT = PREFIX + "endpoint"
REASON = PREFIX + "reason"
DETAIL = PREFIX + "detail"
CATEGORY = PREFIX + "category"
TEXT_BYTES = PREFIX + "text_bytes"
EST_TOTAL_TOKENS = PREFIX + "estimated_total_tokens"
RATIO = PREFIX + "ratio"
OUTPUT_RESERVE = PREFIX + "output_reserve"
STREAM = PREFIX + "stream"
SPILLED = PREFIX + "spilled"
ATTEMPTS = PREFIX + "attempts"  # 2: the short pool failed it and Envoy's net resent it to the long pool
SERVED_POOL = PREFIX + "served_pool"
USAGE_SOURCE = PREFIX + "usage_source"
OBSERVATION = PREFIX + "observation"
ESTIMATE_ERROR_PCT = PREFIX + "estimate_error_pct"
SHORT_PRESSURE = PREFIX + "short_pressure"  # the pressures the decision used (1.0 = at capacity)
LONG_PRESSURE = PREFIX + "long_pressure"
PRESSURE_SOURCE = PREFIX + "pressure_source"  # live (engines' /metrics) | local (own in-flight count)
CONTENT_TRUNCATED = PREFIX + "content_truncated"  # captured messages were cut at capture_content_max_bytes
# The pool cut the answer at the end of its context (vLLM 0.32 clamps instead of refusing): set when true.
CONTEXT_TRUNCATED = PREFIX + "context_truncated"
# The engine was asked for the prompt count (estimator.engine_counts): counted, or why not.
ENGINE_COUNT = PREFIX + "engine_count"

# -- metrics (OTel names; the Prometheus names the exporter derives are in the comments) ---------
M_REQUESTS = "budget_router.requests"  # budget_router_requests_total{pool,reason,endpoint}
M_SPILLOVERS = "budget_router.spillovers"  # budget_router_spillovers_total
M_UNPARSEABLE = "budget_router.unparseable"  # budget_router_unparseable_total{detail}
M_TOO_COMPLEX = "budget_router.too_complex"  # budget_router_too_complex_total{detail}: routed long unread
M_NO_MAX_TOKENS = "budget_router.requests_without_max_tokens"  # ..._total{endpoint}
M_USAGE = "budget_router.usage.observations"  # budget_router_usage_observations_total{source}
M_REJECTED = "budget_router.usage.rejected"  # budget_router_usage_rejected_total{cause}
# Short requests Envoy's net resent to the long pool, by the long pool's answer: served (< 400), rejected
# (4xx: invalid for another reason, the client got the long pool's own error) or failed (5xx).
M_RETRIES = "budget_router.overflow_retries"  # budget_router_overflow_retries_total{category,outcome}
# Answers a pool cut at the end of its context; pool="short" is a truncation caused by routing.
M_TRUNCATIONS = "budget_router.context_truncations"  # budget_router_context_truncations_total{pool,category}
# OTel histograms only take non-negative values, so the signed error e = (est - actual)/actual is
# recorded as est/actual in percent: 100 = exact, 110 = 10 % over (safe), 90 = 10 % under. e = value - 100.
M_ESTIMATE_ERROR = "budget_router.estimate.vs_actual"  # budget_router_estimate_vs_actual_percent{category}
M_PROCESSING = "budget_router.processing.duration"  # budget_router_processing_duration_seconds{phase}
M_EST_TOKENS = "budget_router.estimated.tokens"  # budget_router_estimated_tokens{pool,category}
M_RATIO = "budget_router.calibration.ratio"  # budget_router_calibration_ratio{category}
M_MEAN = "budget_router.calibration.mean"  # budget_router_calibration_mean{category}
M_DEVIATION = "budget_router.calibration.deviation"  # budget_router_calibration_deviation{category}
M_SAMPLES = "budget_router.calibration.samples"  # budget_router_calibration_samples{category}
M_IN_FLIGHT = "budget_router.in_flight"  # budget_router_in_flight{pool}
M_EXACT_COUNTS = "budget_router.estimate.exact_counts"  # budget_router_estimate_exact_counts_total
# Engine counts asked (estimator.engine_counts), by outcome: counted, timeout, error, busy, unavailable.
M_ENGINE_COUNTS = "budget_router.estimate.engine_counts"  # budget_router_estimate_engine_counts_total{outcome}
# Live pool load (only with live_load configured): what the engines said, how old it is, what failed.
M_POOL_RUNNING = "budget_router.pool.running"  # budget_router_pool_running{pool}
M_POOL_WAITING = "budget_router.pool.waiting"  # budget_router_pool_waiting{pool}
M_POOL_KV = "budget_router.pool.kv_cache_usage"  # budget_router_pool_kv_cache_usage{pool}
M_PRESSURE = "budget_router.pool.pressure"  # budget_router_pool_pressure{pool}
M_SCRAPE_AGE = "budget_router.pool.scrape.age"  # budget_router_pool_scrape_age_seconds{pool}
M_SCRAPES = "budget_router.pool.scrapes"  # budget_router_pool_scrapes_total{pool}
M_SCRAPE_FAILURES = "budget_router.pool.scrape.failures"  # ..._scrape_failures_total{pool,cause}
M_LOCAL_FALLBACKS = "budget_router.pool.local_fallbacks"  # ..._local_fallbacks_total{pool}
M_ERRORS = "budget_router.errors"  # budget_router_errors_total{phase}: router bugs, stream ended with an error
M_STATE_SKIPPED = "budget_router.state.skipped_entries"  # budget_router_state_skipped_entries_total
M_STATE_SYNC_FAILURES = "budget_router.state.sync_failures"  # budget_router_state_sync_failures_total

# Phases of the processing-time histogram: the two request messages, and everything after them.
REQUEST_PHASES = ("request_headers", "request_body")
RESPONSE_PHASE = "response"
# The ext_proc messages, each a phase in which the router can fail.
MESSAGE_PHASES = (
    "request_headers", "request_body", "request_trailers", "response_headers", "response_body", "response_trailers",
)  # fmt: skip

# Histogram buckets, chosen for what an operator asks of each series.
SIGNED_ERROR_EDGES = (-50.0, -25.0, -15.0, -10.0, -5.0, -2.5, -1.0, 0.0, 1.0, 2.5, 5.0, 10.0, 15.0, 25.0, 50.0, 100.0)
ERROR_PCT_BUCKETS = tuple(100.0 + e for e in SIGNED_ERROR_EDGES)
PROCESSING_BUCKETS = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
)  # fmt: skip
TOKEN_BUCKETS = tuple(float(2**k) for k in range(7, 18))  # 128 .. 131072
