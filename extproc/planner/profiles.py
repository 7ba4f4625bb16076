"""Instance profiles: what one vLLM instance can hold and how long one engine iteration takes.

An iteration that decodes ``n`` sequences reading ``ctx`` cached tokens and prefills ``m`` prompt
tokens (whose queries see on average ``a`` earlier tokens) takes

    W + H·n + K·ctx + P·m + Q·m·a

W is the weight read (memory bound, paid once per iteration however large the batch), H and P the
per-token matmul compute, K the KV-cache read of decode attention and Q the prefill attention
compute. It is the paper's first-order ``W + H·n`` model with the two context-dependent terms made
explicit, so long contexts cost what they cost. The derivation of each number from the model shape and
the accelerator's datasheet is written next to it in the YAML files and in docs/planner.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

_INSTANCE_KEYS = {
    "max_model_len": int,
    "max_num_seqs": int,
    "max_num_batched_tokens": int,
    "kv_capacity_tokens": int,
    "block_size": int,
    "iter_fixed_s": float,
    "iter_per_seq_s": float,
    "iter_per_kv_token_s": float,
    "prefill_per_token_s": float,
    "prefill_attn_per_token_ctx_s": float,
    "gpus": int,
    "usd_per_gpu_hour": float,
}
_OPTIONAL_KEYS = {"max_waiting": int}


@dataclass(frozen=True, slots=True)
class InstanceProfile:
    """One serving instance (possibly several GPUs in tensor parallel): the unit the simulator runs."""

    name: str
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    kv_capacity_tokens: int
    block_size: int
    iter_fixed_s: float
    iter_per_seq_s: float
    iter_per_kv_token_s: float
    prefill_per_token_s: float
    prefill_attn_per_token_ctx_s: float
    gpus: int
    usd_per_gpu_hour: float
    max_waiting: int | None = 1024

    @property
    def kv_blocks(self) -> int:
        return self.kv_capacity_tokens // self.block_size

    @property
    def usd_per_hour(self) -> float:
        return self.gpus * self.usd_per_gpu_hour

    def validate(self) -> None:
        where = f"profile {self.name!r}"
        for key in (
            "max_model_len",
            "max_num_seqs",
            "max_num_batched_tokens",
            "kv_capacity_tokens",
            "block_size",
            "gpus",
        ):
            if getattr(self, key) < 1:
                raise ValueError(f"{where}: {key} must be at least 1")
        for key in (
            "iter_per_seq_s",
            "iter_per_kv_token_s",
            "prefill_per_token_s",
            "prefill_attn_per_token_ctx_s",
            "usd_per_gpu_hour",
        ):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{where}: {key} must be a finite number >= 0")
        if not (math.isfinite(self.iter_fixed_s) and self.iter_fixed_s > 0):
            raise ValueError(f"{where}: iter_fixed_s must be > 0 (an iteration always takes time)")
        if self.max_num_batched_tokens <= self.max_num_seqs:
            raise ValueError(
                f"{where}: max_num_batched_tokens must exceed max_num_seqs, or a full decode "
                "batch would leave no token budget for prefill"
            )
        if math.ceil(self.max_model_len / self.block_size) > self.kv_blocks:
            raise ValueError(
                f"{where}: the KV cache ({self.kv_capacity_tokens} tokens) cannot hold one "
                f"max_model_len ({self.max_model_len}) sequence"
            )
        if self.max_waiting is not None and self.max_waiting < 1:
            raise ValueError(f"{where}: max_waiting must be at least 1 (or null for no cap)")


@dataclass(frozen=True, slots=True)
class FleetProfile:
    """The paper's two pool configurations on one hardware/model pair; the homogeneous baseline
    runs every instance with the long configuration."""

    name: str
    description: str
    short: InstanceProfile
    long: InstanceProfile

    @property
    def homogeneous(self) -> InstanceProfile:
        return self.long


def _instance(name: str, common: dict[str, Any], own: dict[str, Any]) -> InstanceProfile:
    merged = {**common, **own}
    unknown = set(merged) - set(_INSTANCE_KEYS) - set(_OPTIONAL_KEYS)
    if unknown:
        raise ValueError(f"profile {name!r}: unknown keys {sorted(unknown)}")
    values: dict[str, Any] = {}
    for key, kind in _INSTANCE_KEYS.items():
        if key not in merged:
            raise ValueError(f"profile {name!r}: missing {key}")
        values[key] = _number(name, key, merged[key], kind)
    if "max_waiting" in merged:
        raw = merged["max_waiting"]
        values["max_waiting"] = None if raw is None else _number(name, "max_waiting", raw, int)
    prof = InstanceProfile(name=name, **values)
    prof.validate()
    return prof


def _number(profile: str, key: str, raw: Any, kind: type) -> int | float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ValueError(f"profile {profile!r}: {key} must be a number, got {raw!r}")
    if kind is int:
        if isinstance(raw, float) and not raw.is_integer():
            raise ValueError(f"profile {profile!r}: {key} must be an integer, got {raw!r}")
        return int(raw)
    return float(raw)


def parse_profile(data: Any, name: str) -> FleetProfile:
    if not isinstance(data, dict) or not isinstance(data.get("pools"), dict):
        raise ValueError(f"profile {name!r}: expected a mapping with a 'pools' mapping")
    common = data.get("instance", {}) or {}
    if not isinstance(common, dict):
        raise ValueError(f"profile {name!r}: 'instance' must be a mapping")
    pools = data["pools"]
    missing = {"short", "long"} - set(pools)
    if missing:
        raise ValueError(f"profile {name!r}: pools needs 'short' and 'long' (missing {sorted(missing)})")
    for pool in ("short", "long"):
        if not isinstance(pools[pool], dict):
            raise ValueError(f"profile {name!r}: pools.{pool} must be a mapping")
    short = _instance(f"{name}/short", common, pools["short"])
    long = _instance(f"{name}/long", common, pools["long"])
    if short.max_model_len > long.max_model_len:
        raise ValueError(f"profile {name!r}: the short pool's max_model_len exceeds the long pool's")
    return FleetProfile(name, str(data.get("description", "")), short, long)


def builtin_profiles() -> list[str]:
    folder = resources.files("extproc") / "profiles"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_profile(name_or_path: str) -> FleetProfile:
    """A built-in profile by name (``llama3-70b-a100``) or a YAML file path."""
    if name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path:
        path = Path(name_or_path)
        if not path.is_file():
            raise ValueError(f"profile file not found: {path}")
        text, name = path.read_text(encoding="utf-8"), path.stem
    else:
        if name_or_path not in builtin_profiles():
            raise ValueError(f"unknown profile {name_or_path!r}; built-in: {', '.join(builtin_profiles())}")
        text = (resources.files("extproc") / "profiles" / f"{name_or_path}.yaml").read_text(encoding="utf-8")
        name = name_or_path
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"profile {name!r}: not valid YAML: {exc}") from None
    return parse_profile(data, name)
