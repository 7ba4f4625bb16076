"""Settings of one emulated ``vllm serve`` instance, with the checks vLLM itself does at startup."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from extproc.emulator.errors import DEFAULT_VLLM_BEHAVIOUR, ERROR_SHAPES, MAX_CHARS_PER_TOKEN, VLLM_BEHAVIOURS
from extproc.emulator.models import NONE, resolve_profile
from extproc.emulator.tokens import ENCODINGS, check_available

USAGE_LIES = ("none", "zero", "huge", "random")
# How a stream may deviate from vLLM's clean framing (see stream_faults.py).
STREAM_QUIRKS = ("none", "crlf", "comments", "byte_split", "bad_json", "no_usage", "truncate")
HUGE_USAGE = 10**9


@dataclass
class FaultConfig:
    """Misbehaviour on demand, for hardening tests; changeable at runtime via ``POST /admin/faults``."""

    error_rate: float = 0.0  # share of /v1 requests answered with error_status instead of served
    error_status: int = 503
    error_shape: str = "nested"  # body shape of injected errors
    extra_latency_ms: float = 0.0  # added before a request enters the engine (not scaled)
    usage_lie: str = "none"  # what usage.prompt_tokens says: none (truth), zero, huge (10^9), random
    stream_quirk: str = "none"  # one of STREAM_QUIRKS

    def validate(self) -> None:
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError(f"error_rate must be within [0, 1], got {self.error_rate}")
        if not 400 <= self.error_status <= 599:
            raise ValueError(f"error_status must be an HTTP error status (400-599), got {self.error_status}")
        if self.error_shape not in ERROR_SHAPES:
            raise ValueError(f"error_shape must be one of {', '.join(ERROR_SHAPES)}, got {self.error_shape!r}")
        if not (self.extra_latency_ms >= 0 and math.isfinite(self.extra_latency_ms)):
            raise ValueError(f"extra_latency_ms must be a finite number >= 0, got {self.extra_latency_ms}")
        if self.usage_lie not in USAGE_LIES:
            raise ValueError(f"usage_lie must be one of {', '.join(USAGE_LIES)}, got {self.usage_lie!r}")
        if self.stream_quirk not in STREAM_QUIRKS:
            raise ValueError(f"stream_quirk must be one of {', '.join(STREAM_QUIRKS)}, got {self.stream_quirk!r}")

    def updated(self, changes: dict[str, Any]) -> FaultConfig:
        """A validated copy with ``changes`` applied; unknown keys and wrong types are errors."""
        known = {f.name: f for f in fields(self)}
        merged = asdict(self)
        for key, value in changes.items():
            if key not in known:
                raise ValueError(f"unknown fault setting {key!r}; known: {', '.join(known)}")
            want = type(merged[key])
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if type(value) is not want:
                raise ValueError(f"fault setting {key!r} must be {want.__name__}, got {value!r}")
            merged[key] = value
        out = FaultConfig(**merged)
        out.validate()
        return out


@dataclass
class EmulatorConfig:
    """Everything that shapes the emulator's answers; defaults model a Llama-3-8B-class server."""

    host: str = "127.0.0.1"
    port: int = 8000  # 0 = let the OS pick (tests)
    model: str = "emulated/llama-3-8b-instruct"
    max_model_len: int = 8192
    max_num_seqs: int = 128
    encoding: str = "cl100k_base"
    # none: encoding and template_* below as set; auto: chosen by the model name; or a profile name
    # (llama3, qwen3, gpt-4o, gpt-4), which then replaces encoding, template_* and bos_tokens.
    model_profile: str = NONE
    # KV cache capacity in tokens; None = max_model_len * max_num_seqs / 2 (at least max_model_len).
    kv_cache_tokens: int | None = None
    block_size: int = 16
    # Llama-3 template: <|start_header_id|>ROLE<|end_header_id|>\n\n ... <|eot_id|> is 4 fixed tokens
    # per message plus the role's own tokens; BOS + the assistant generation header is 5 per request.
    template_tokens_per_message: int = 4
    template_tokens_per_request: int = 5
    bos_tokens: int = 1  # added to string prompts of /v1/completions (not to token-id prompts)
    image_tokens: int = 576  # fixed cost of one image/audio/video content part
    # A request without max_tokens may generate the rest of the context (vLLM's default). 0: it does
    # (like ignore_eos); N: the emulated model emits EOS after N tokens if its budget is larger.
    eos_after_tokens: int = 0
    latency_scale: float = 1.0  # multiplies every modelled time; 0 = as fast as possible
    prefill_ms_per_token: float = 0.025  # ~40K prompt tokens/s
    decode_ms_per_step: float = 8.0
    decode_ms_per_seq: float = 0.15  # each running sequence slows every decode step
    decode_ms_per_1k_kv_tokens: float = 0.02  # attention over the batch's KV slows it too
    seed: int = 0
    frozen_time: int | None = None  # fixed "created" for byte-for-byte comparisons
    # Which vLLM generation to behave like where they differ: today's (v0.32: output cut at the context,
    # only a prompt alone over it refused) or an older one (prompt + max_tokens over it refused, in that
    # version's wording); see errors.py.
    vllm_behaviour: str = DEFAULT_VLLM_BEHAVIOUR
    max_chars_per_token: int = MAX_CHARS_PER_TOKEN  # vLLM's pre-tokenization check: input chars per token
    error_shape: str = "nested"
    request_log_size: int = 256
    max_body_bytes: int = 256 * 1024 * 1024
    admin: bool = True
    faults: FaultConfig = field(default_factory=FaultConfig)

    @property
    def kv_capacity_tokens(self) -> int:
        if self.kv_cache_tokens is not None:
            return self.kv_cache_tokens
        return max(self.max_model_len, self.max_model_len * self.max_num_seqs // 2)

    @property
    def kv_capacity_blocks(self) -> int:
        return self.kv_capacity_tokens // self.block_size

    def validate(self) -> None:
        positive = (
            "max_model_len", "max_num_seqs", "block_size", "request_log_size", "max_body_bytes", "max_chars_per_token",
        )  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        non_negative = (
            "template_tokens_per_message", "template_tokens_per_request", "bos_tokens",
            "image_tokens", "latency_scale", "prefill_ms_per_token", "decode_ms_per_step",
            "decode_ms_per_seq", "decode_ms_per_1k_kv_tokens",
        )  # fmt: skip
        for name in non_negative:
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be within 0-65535, got {self.port}")
        if self.eos_after_tokens < 0:
            raise ValueError(f"eos_after_tokens must be >= 0, got {self.eos_after_tokens}")
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}, got {self.encoding!r}")
        check_available(self.effective().encoding)
        if self.vllm_behaviour not in VLLM_BEHAVIOURS:
            raise ValueError(
                f"vllm_behaviour must be one of {', '.join(VLLM_BEHAVIOURS)}, got {self.vllm_behaviour!r}"
            )
        if self.error_shape not in ERROR_SHAPES:
            raise ValueError(f"error_shape must be one of {', '.join(ERROR_SHAPES)}, got {self.error_shape!r}")
        if not self.model:
            raise ValueError("model name must not be empty")
        needed = -(-self.max_model_len // self.block_size)
        if self.kv_capacity_blocks < needed:
            # vLLM refuses to start when one full-length sequence cannot fit in the KV cache.
            raise ValueError(
                f"the KV cache ({self.kv_capacity_tokens} tokens, {self.kv_capacity_blocks} blocks of "
                f"{self.block_size}) cannot hold one sequence of max_model_len={self.max_model_len}"
            )
        self.faults.validate()

    def effective(self) -> EmulatorConfig:
        """The settings served: a model profile's tokenizer and template replace the explicit ones."""
        profile = resolve_profile(self.model_profile, self.model)
        if profile is None:
            return self
        return replace(
            self,
            model_profile=NONE,
            encoding=profile.encoding,
            template_tokens_per_message=profile.tokens_per_message,
            template_tokens_per_request=profile.tokens_per_request,
            bos_tokens=profile.bos_tokens,
        )
