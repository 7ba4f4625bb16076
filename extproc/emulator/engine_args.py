"""Settings of one emulated ``vllm serve`` instance, with the checks vLLM itself does at startup."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from extproc.algorithm.budget import IMAGE_TOKENS
from extproc.emulator.errors import DEFAULT_VLLM_BEHAVIOUR, ERROR_SHAPES, MAX_CHARS_PER_TOKEN, VLLM_BEHAVIOURS
from extproc.emulator.models import NONE, PROFILE_CHOICES, resolve_profile
from extproc.emulator.tokens import ENCODINGS, check_available
from extproc.options import group, opt

USAGE_LIES = ("none", "zero", "huge", "random")
# How a stream may deviate from vLLM's clean framing (see stream_faults.py).
STREAM_QUIRKS = ("none", "crlf", "comments", "byte_split", "bad_json", "no_usage", "truncate")
HUGE_USAGE = 10**9


@dataclass(frozen=True)
class FaultConfig:
    """Misbehaviour on demand, for hardening tests; changeable at runtime via ``POST /admin/faults``."""

    error_rate: float = opt(0.0, "Share of /v1 requests answered with --fault-error-status instead of served.")
    error_status: int = opt(503, "HTTP status of injected errors.", "STATUS")
    error_shape: str = opt("nested", "Body shape of injected errors.", choices=ERROR_SHAPES)
    extra_latency_ms: float = opt(0.0, "Delay added to every request before it is scheduled, ms (not scaled).")
    usage_lie: str = opt(
        "none", "What usage.prompt_tokens reports: none (truth), zero, huge (10^9), random.", choices=USAGE_LIES
    )
    stream_quirk: str = opt(
        "none", "SSE deviation: crlf line ends, ': keep-alive' comments, one byte per write, an invalid JSON "
        "event, no usage chunk, or a connection cut after half the tokens.", choices=STREAM_QUIRKS,
    )  # fmt: skip

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


@dataclass(frozen=True)
class EmulatorConfig:
    """Everything that shapes the emulator's answers; defaults model a Llama-3-8B-class server. Each
    field is also a ``budget-router emulate`` flag (``extproc.options``)."""

    host: str = opt("127.0.0.1", "Address to bind.", "HOST", example="0.0.0.0")
    port: int = opt(8000, "Port to bind (0 = any free port; the chosen one is printed).")
    model: str = opt(
        "emulated/llama-3-8b-instruct", "Served model name.", "NAME", aliases=("--served-model-name",), example="m"
    )
    max_model_len: int = opt(
        8192, "Context window: the output is cut at it (v0.32) or prompt + max_tokens beyond it gets vLLM's 400 "
        "(older --vllm-behaviour).",
    )  # fmt: skip
    max_num_seqs: int = opt(128, "Most sequences running at once; the rest wait in a FIFO queue.")
    encoding: str = opt(
        "cl100k_base", "BPE used for token counts (llama3 and qwen3 need the emulator extra: quicktok-v1).",
        choices=ENCODINGS,
    )  # fmt: skip
    model_profile: str = opt(
        NONE, "Tokenizer + chat-template overhead: none (the flags as set), auto (by --model name: llama* -> "
        "llama3, qwen* -> qwen3, gpt-4o*/o1/o3 -> o200k, gpt-4*/gpt-3.5* -> cl100k) or a profile name, which then "
        "replaces encoding, template_* and bos_tokens.", choices=PROFILE_CHOICES,
    )  # fmt: skip
    kv_cache_tokens: int | None = opt(
        None,
        "KV cache capacity in tokens (at least max_model_len).",
        shown="max_model_len * max_num_seqs / 2",
        example=str(1 << 20),
    )
    block_size: int = opt(16, "KV cache block size in tokens.")
    # Llama-3 template: <|start_header_id|>ROLE<|end_header_id|>\n\n ... <|eot_id|> is 4 fixed tokens
    # per message plus the role's own tokens; BOS + the assistant generation header is 5 per request.
    template_tokens_per_message: int = opt(4, "Chat-template tokens per message, besides the role's own tokens.")
    template_tokens_per_request: int = opt(5, "Chat-template tokens per request (BOS + generation prompt).")
    bos_tokens: int = opt(1, "Tokens added to string prompts of /v1/completions (not to token-id prompts).")
    image_tokens: int = opt(
        IMAGE_TOKENS, "Fixed token cost of one image/audio/video content part (the router's routing.image_tokens "
        "default: one source).",
    )  # fmt: skip
    eos_after_tokens: int = opt(
        0, "Without max_tokens a request may generate the rest of the context (vLLM's default); N > 0 makes the "
        "model stop (finish_reason stop) after N tokens instead.",
    )  # fmt: skip
    latency_scale: float = opt(1.0, "Multiplies every modelled time (0 = as fast as possible).")
    prefill_ms_per_token: float = opt(0.025, "Prefill time per prompt token, ms (~40K prompt tokens/s).", "MS")
    decode_ms_per_step: float = opt(8.0, "Base time of one decode step, ms.", "MS")
    decode_ms_per_seq: float = opt(0.15, "Extra decode-step time per running sequence, ms.", "MS")
    decode_ms_per_1k_kv_tokens: float = opt(
        0.02, "Extra decode-step time per 1000 tokens held in the KV cache, ms.", "MS"
    )
    seed: int = opt(0, "Seed of the generated text and of fault draws.")
    frozen_time: int | None = opt(None, "Fixed 'created' timestamp (byte-for-byte comparable bodies).", "UNIX_TIME")
    # Which vLLM generation to behave like where they differ (see errors.py).
    vllm_behaviour: str = opt(
        DEFAULT_VLLM_BEHAVIOUR, "Which vLLM to behave like over the context: v0.32 (today's: prompt + max_tokens "
        "over it is served, output cut at the context; a prompt alone over it gets 'at least L+1 input tokens') "
        "or an older one that refuses prompt + max_tokens over it with its 400: v0.18 ('at least N input tokens', "
        "input characters), v0.16 ('You passed N input tokens/characters'), v0.11 (exact counts), legacy "
        "(<= 0.9), 'requested' (SGLang).", choices=VLLM_BEHAVIOURS, aliases=("--context-error-style",),
    )  # fmt: skip
    max_chars_per_token: int = opt(
        MAX_CHARS_PER_TOKEN, "vLLM's pre-tokenization check refuses prompts longer than max input tokens x this."
    )
    error_shape: str = opt(
        "nested", "Error body: nested {'error': {...}} (current vLLM) or flat {'object': 'error', ...}.",
        choices=ERROR_SHAPES,
    )  # fmt: skip
    request_log_size: int = opt(256, "Requests remembered for GET /admin/requests.")
    max_body_bytes: int = opt(256 * 1024 * 1024, "Largest request body accepted (413 beyond).")
    admin: bool = opt(True, "Serve the /admin endpoints.")
    faults: FaultConfig = group(FaultConfig, prefix="fault", title="faults")

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
