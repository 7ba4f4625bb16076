"""Instance profiles: what one vLLM instance can hold and how long one engine step takes.

A step that runs ``t`` batched tokens (one per decoding sequence plus the prefill chunks), reads ``ctx``
cached tokens in decode attention and prefills ``m`` tokens whose queries see on average ``a`` earlier
tokens takes

    W + R + P·max(0, t − t0) + r·t + K·ctx + Q·m·a

W is the weight-read floor (the GEMMs are memory bound below the knee ``t0``), P the GEMM compute per
token above it, R + r·t the tensor-parallel all-reduces (R: the floor of latency-bound small messages),
K the KV read of decode attention and Q the prefill attention compute. ``step_fit`` fits W, P, t0, R and
r to profiled numbers; each profile says in ``fitted_to`` what its numbers come from.
"""

from __future__ import annotations

import dataclasses
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
    "step_floor_s": float,
    "step_knee_tokens": int,
    "step_per_token_s": float,
    "allreduce_floor_s": float,
    "allreduce_per_token_s": float,
    "kv_read_per_token_s": float,
    "prefill_attn_per_pair_s": float,
    "gpus": int,
    "usd_per_gpu_hour": float,
}
_OPTIONAL_KEYS = {"max_waiting": int}
_RENAMED = {  # the v2 iteration model's keys: a profile written for it gets told what replaced them
    "iter_fixed_s": "step_floor_s (+ allreduce_floor_s)",
    "iter_per_seq_s": "step_per_token_s",
    "prefill_per_token_s": "step_per_token_s",
    "iter_per_kv_token_s": "kv_read_per_token_s",
    "prefill_attn_per_token_ctx_s": "prefill_attn_per_pair_s",
}


@dataclass(frozen=True, slots=True)
class InstanceProfile:
    """One serving instance (possibly several GPUs in tensor parallel): the unit the simulator runs."""

    name: str
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    kv_capacity_tokens: int
    block_size: int
    step_floor_s: float
    step_knee_tokens: int
    step_per_token_s: float
    allreduce_floor_s: float
    allreduce_per_token_s: float
    kv_read_per_token_s: float
    prefill_attn_per_pair_s: float
    gpus: int
    usd_per_gpu_hour: float
    max_waiting: int | None = 1024

    @property
    def kv_blocks(self) -> int:
        return self.kv_capacity_tokens // self.block_size

    @property
    def usd_per_hour(self) -> float:
        return self.gpus * self.usd_per_gpu_hour

    @property
    def worst_case_seqs(self) -> int:
        """Sequences the KV cache holds when each reserves ``max_model_len``: the paper's provisioning."""
        return max(1, self.kv_capacity_tokens // self.max_model_len)

    def step_s(self, tokens: float) -> float:
        """A step's cost without attention: weights, GEMMs and all-reduces for ``tokens`` batched tokens."""
        over = tokens - self.step_knee_tokens
        return (
            self.step_floor_s
            + self.allreduce_floor_s
            + (self.step_per_token_s * over if over > 0 else 0.0)
            + self.allreduce_per_token_s * tokens
        )

    def tuned(self, max_num_seqs: int, max_num_batched_tokens: int) -> InstanceProfile:
        """This instance run with other scheduler limits (the planner's search)."""
        base = self.name.split("[")[0]
        out = dataclasses.replace(
            self,
            name=f"{base}[seqs={max_num_seqs},chunk={max_num_batched_tokens}]",
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
        )
        out.validate()
        return out

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
        if self.step_knee_tokens < 0:
            raise ValueError(f"{where}: step_knee_tokens must be >= 0")
        for key in (
            "step_per_token_s",
            "allreduce_floor_s",
            "allreduce_per_token_s",
            "kv_read_per_token_s",
            "prefill_attn_per_pair_s",
            "usd_per_gpu_hour",
        ):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{where}: {key} must be a finite number >= 0")
        if not (math.isfinite(self.step_floor_s) and self.step_floor_s > 0):
            raise ValueError(f"{where}: step_floor_s must be > 0 (a step always takes time)")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"{where}: max_num_batched_tokens ({self.max_num_batched_tokens}) must be at least max_num_seqs "
                f"({self.max_num_seqs}), as vLLM requires: a full decode batch takes one token per sequence"
            )
        if math.ceil(self.max_model_len / self.block_size) > self.kv_blocks:
            raise ValueError(
                f"{where}: the KV cache ({self.kv_capacity_tokens} tokens) cannot hold one "
                f"max_model_len ({self.max_model_len}) sequence (vLLM refuses to start)"
            )
        if self.max_waiting is not None and self.max_waiting < 1:
            raise ValueError(f"{where}: max_waiting must be at least 1 (or null for no cap)")


@dataclass(frozen=True, slots=True)
class FleetProfile:
    """The paper's two pool configurations on one hardware/model pair; the paper's homogeneous
    baseline runs every instance with the long configuration."""

    name: str
    description: str
    fitted_to: str
    short: InstanceProfile
    long: InstanceProfile

    @property
    def homogeneous(self) -> InstanceProfile:
        return self.long


def _instance(name: str, common: dict[str, Any], own: dict[str, Any]) -> InstanceProfile:
    merged = {**common, **own}
    old = sorted(set(merged) & set(_RENAMED))
    if old:
        raise ValueError(
            f"profile {name!r}: {', '.join(old)} belong to the old iteration model; use "
            + ", ".join(f"{k} -> {_RENAMED[k]}" for k in old)
            + " (see docs/planner.md, profiles)"
        )
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
    fitted_to = data.get("fitted_to")
    if not isinstance(fitted_to, str) or not fitted_to.strip():
        raise ValueError(f"profile {name!r}: 'fitted_to' must say what the step costs were fitted to (or derived from)")
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
    return FleetProfile(name, str(data.get("description", "")), fitted_to.strip(), short, long)


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
