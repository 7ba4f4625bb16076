"""``budget-router emulate``: run one emulated ``vllm serve`` until SIGTERM or SIGINT.

Flags are generated from ``EmulatorConfig``/``FaultConfig`` fields (``--max-model-len``,
``--fault-error-rate``, ...), so every setting is reachable and documented in one place.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
import sys
import types
import typing
from typing import Any

from extproc.emulator.engine_args import STREAM_QUIRKS, USAGE_LIES, EmulatorConfig, FaultConfig
from extproc.emulator.errors import ERROR_SHAPES, VLLM_BEHAVIOURS
from extproc.emulator.models import PROFILE_CHOICES
from extproc.emulator.tokens import ENCODINGS

HELP: dict[str, str] = {
    "host": "address to bind",
    "port": "port to bind (0 = any free port; the chosen one is printed)",
    "model": "served model name (also accepted as --served-model-name)",
    "max_model_len": "context window: the output is cut at it (v0.32) or prompt + max_tokens beyond it gets "
    "vLLM's 400 (older --vllm-behaviour)",
    "max_num_seqs": "most sequences running at once; the rest wait in a FIFO queue",
    "encoding": "BPE used for token counts (llama3 and qwen3 need the emulator extra: quicktok-v1)",
    "model_profile": "tokenizer + chat-template overhead: none (the flags as set), auto (by --model name: "
    "llama* -> llama3, qwen* -> qwen3, gpt-4o*/o1/o3 -> o200k, gpt-4*/gpt-3.5* -> cl100k) or a profile name",
    "kv_cache_tokens": "KV cache capacity in tokens (default max_model_len * max_num_seqs / 2)",
    "block_size": "KV cache block size in tokens",
    "template_tokens_per_message": "chat-template tokens per message, besides the role's own tokens",
    "template_tokens_per_request": "chat-template tokens per request (BOS + generation prompt)",
    "bos_tokens": "tokens added to string prompts of /v1/completions",
    "image_tokens": "fixed token cost of one image/audio/video content part",
    "eos_after_tokens": "without max_tokens a request may generate the rest of the context (vLLM's default); "
    "N > 0 makes the model stop (finish_reason stop) after N tokens instead",
    "latency_scale": "multiplies every modelled time (0 = as fast as possible)",
    "prefill_ms_per_token": "prefill time per prompt token, ms",
    "decode_ms_per_step": "base time of one decode step, ms",
    "decode_ms_per_seq": "extra decode-step time per running sequence, ms",
    "decode_ms_per_1k_kv_tokens": "extra decode-step time per 1000 tokens held in the KV cache, ms",
    "seed": "seed of the generated text and of fault draws",
    "frozen_time": "fixed 'created' timestamp (byte-for-byte comparable bodies)",
    "vllm_behaviour": "which vLLM to behave like over the context: v0.32 (today's: prompt + max_tokens over it is "
    "served, output cut at the context; a prompt alone over it gets 'at least L+1 input tokens') or an older one "
    "that refuses prompt + max_tokens over it with its 400: v0.18 ('at least N input tokens', input characters), "
    "v0.16 ('You passed N input tokens/characters'), v0.11 (exact counts), legacy (<= 0.9), 'requested' "
    "(SGLang); also accepted as --context-error-style",
    "max_chars_per_token": "vLLM's pre-tokenization check refuses prompts longer than max input tokens x this",
    "error_shape": "error body: nested {'error': {...}} (current vLLM) or flat {'object': 'error', ...}",
    "request_log_size": "requests remembered for GET /admin/requests",
    "max_body_bytes": "largest request body accepted (413 beyond)",
    "error_rate": "share of /v1 requests answered with --fault-error-status",
    "error_status": "HTTP status of injected errors",
    "error_shape_fault": "body shape of injected errors",
    "extra_latency_ms": "delay added to every request before it is scheduled, ms (not scaled)",
    "usage_lie": "what usage.prompt_tokens reports: none (truth), zero, huge (10^9), random",
    "stream_quirk": "SSE deviation: crlf line ends, ': keep-alive' comments, one byte per write, an invalid "
    "JSON event, no usage chunk, or a connection cut after half the tokens",
}
CHOICES: dict[str, tuple[str, ...]] = {
    "encoding": ENCODINGS,
    "model_profile": PROFILE_CHOICES,
    "vllm_behaviour": VLLM_BEHAVIOURS,
    "error_shape": ERROR_SHAPES,
    "usage_lie": USAGE_LIES,
    "stream_quirk": STREAM_QUIRKS,
}
SKIP = {"faults", "admin"}
# Other names a flag answers to: vLLM's own (--served-model-name), and the name a flag had before.
ALIASES: dict[str, tuple[str, ...]] = {"model": ("--served-model-name",), "vllm_behaviour": ("--context-error-style",)}


def _scalar_type(annotation: Any) -> type:
    hint = annotation
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint if hint in (int, float, str) else str


def _add_fields(parser: argparse.ArgumentParser, cls: type, prefix: str) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in SKIP:
            continue
        flag = "--" + prefix + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        names = [flag, *ALIASES.get(f.name, ())]
        help_key = f"{f.name}_fault" if prefix and f.name == "error_shape" else f.name
        parser.add_argument(
            *names,
            dest=prefix.replace("-", "_") + f.name,
            type=_scalar_type(hints[f.name]),
            default=default,
            choices=CHOICES.get(f.name),
            metavar=None if f.name in CHOICES else f.name.upper().split("_")[-1],
            help=f"{HELP.get(help_key, '')} (default: {default})",
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _add_fields(parser, EmulatorConfig, "")
    _add_fields(parser, FaultConfig, "fault-")
    parser.add_argument("--no-admin", action="store_true", help="do not serve the /admin endpoints")


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    faults = FaultConfig(**{f.name: getattr(args, "fault_" + f.name) for f in dataclasses.fields(FaultConfig)})
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(EmulatorConfig) if f.name not in SKIP}
    cfg = EmulatorConfig(**values, admin=not args.no_admin, faults=faults)
    cfg.validate()
    return cfg


async def serve(cfg: EmulatorConfig) -> None:
    from extproc.emulator.server import start_emulator

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    running = await start_emulator(cfg)
    print(f"emulator listening on {running.url}", flush=True)
    try:
        await stop.wait()
    finally:
        await running.close()


def run(args: argparse.Namespace) -> int:
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        print(f"budget-router emulate: error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(cfg))
    except OSError as exc:
        print(f"budget-router emulate: error: cannot listen on {cfg.host}:{cfg.port}: {exc}", file=sys.stderr)
        return 1
    return 0
