"""``/metrics`` with vLLM's names and labels, read live from the engine at scrape time.

These are the series gateways and autoscalers scrape from vLLM (GIE's model-server protocol uses
running/waiting/kv_cache_usage_perc); each carries ``engine`` and ``model_name`` labels as vLLM's do.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from extproc.emulator.engine import Engine

FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")  # vLLM 0.32's FinishReason
# Why a request waits: "capacity" (no slot or KV blocks), "deferred" (LoRA budget, KV transfer; never here).
WAITING_REASONS = ("capacity", "deferred")


class EngineCollector(Collector):
    def __init__(self, engine: Engine, model: str) -> None:
        self.engine = engine
        self.labels = {"engine": "0", "model_name": model}

    def _gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        g = GaugeMetricFamily(name, doc, labels=list(self.labels))
        g.add_metric(list(self.labels.values()), value)
        return g

    def _counter(self, name: str, doc: str, value: float) -> CounterMetricFamily:
        c = CounterMetricFamily(name, doc, labels=list(self.labels))
        c.add_metric(list(self.labels.values()), value)
        return c

    def collect(self) -> Iterator[Metric]:
        e = self.engine
        yield self._gauge("vllm:num_requests_running", "Number of requests in model execution batches.", len(e.running))
        yield self._gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", len(e.waiting))
        by_reason = GaugeMetricFamily(
            "vllm:num_requests_waiting_by_reason",
            "Number of waiting requests by reason. Sum of all reasons equals vllm:num_requests_waiting.",
            labels=[*self.labels, "reason"],
        )
        for reason in WAITING_REASONS:
            by_reason.add_metric([*self.labels.values(), reason], len(e.waiting) if reason == "capacity" else 0)
        yield by_reason
        yield self._gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", e.kv_usage)
        yield self._counter(
            "vllm:num_preemptions", "Cumulative number of preemption from the engine.", e.preemptions_total
        )
        yield self._counter("vllm:prompt_tokens", "Number of prefill tokens processed.", e.prompt_tokens_total)
        yield self._counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", e.generation_tokens_total
        )
        # Label names in vLLM 0.32's printed order (its multiprocess exposition sorts them).
        success = CounterMetricFamily(
            "vllm:request_success", "Count of successfully processed requests.",
            labels=["engine", "finished_reason", "model_name"],
        )  # fmt: skip
        for reason in FINISH_REASONS:
            success.add_metric([self.labels["engine"], reason, self.labels["model_name"]], e.finished[reason])
        yield success
        info = GaugeMetricFamily(
            "vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
            labels=["block_size", "engine", "num_gpu_blocks"],
        )  # fmt: skip
        info.add_metric([str(e.cfg.block_size), "0", str(e.capacity_blocks)], 1.0)
        yield info


def metrics_registry(engine: Engine, model: str) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(engine, model))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
