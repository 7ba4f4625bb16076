"""The fleet's shape: each pool's context, concurrency and replicas, and what the router is told.

The router's spillover works on the short pool's capacity (in-flight requests it holds: replicas x
``max_num_seqs``) and routes by both pools' contexts; a compose file that gave the engines 4 slots
and the router the 256 of its default spilled nothing while 20 requests queued. So the engines'
flags and the router's flags come from one ``FleetShape`` here, as numbers (``up``, Kubernetes) or as
compose variables (``SHORT_MAX_NUM_SEQS`` feeds both the pool and the router).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

POOLS = ("short", "long")


@dataclass(frozen=True)
class PoolShape:
    """One pool: every replica serves ``max_model_len`` tokens with up to ``max_num_seqs`` running."""

    name: str
    max_model_len: int
    max_num_seqs: int
    replicas: int = 1

    def __post_init__(self) -> None:
        for field in ("max_model_len", "max_num_seqs", "replicas"):
            if getattr(self, field) < 1:
                raise ValueError(f"{self.name} pool: {field} must be >= 1, got {getattr(self, field)}")

    @property
    def capacity(self) -> int:
        """In-flight requests the whole pool holds before the engines queue."""
        return self.max_num_seqs * self.replicas

    def engine_flags(self) -> list[str]:
        """The flags vLLM and the emulator share for this shape."""
        return engine_flags(str(self.max_model_len), str(self.max_num_seqs))


class RouterShape(NamedTuple):
    """The five router options the fleet decides, as text (a number, or a compose variable)."""

    short_context: str
    long_context: str
    b_short: str
    short_capacity: str
    long_capacity: str


# RouterShape field -> the `budget-router serve` flag that takes it.
ROUTER_FLAGS = {
    "short_context": "--routing-short-context",
    "long_context": "--routing-long-context",
    "b_short": "--routing-b-short",
    "short_capacity": "--spillover-short-capacity",
    "long_capacity": "--spillover-long-capacity",
}


def engine_flags(max_model_len: str, max_num_seqs: str) -> list[str]:
    return [f"--max-model-len={max_model_len}", f"--max-num-seqs={max_num_seqs}"]


def router_flags(shape: RouterShape) -> list[str]:
    return [f"{flag}={getattr(shape, field)}" for field, flag in ROUTER_FLAGS.items()]


@dataclass(frozen=True)
class FleetShape:
    """Two pools and the router's threshold; ``b_short`` defaults to the short pool's context (a
    budget that fits the window goes short, as in the paper's 8192 / 8192)."""

    short: PoolShape = PoolShape("short", 8192, 128)
    long: PoolShape = PoolShape("long", 65536, 16)
    b_short: int | None = None

    def __post_init__(self) -> None:
        if (self.short.name, self.long.name) != POOLS:
            raise ValueError(f"pools must be named {POOLS}, got ({self.short.name!r}, {self.long.name!r})")
        if self.short.max_model_len > self.long.max_model_len:
            raise ValueError(
                f"the short pool's context ({self.short.max_model_len}) exceeds the long pool's"
                f" ({self.long.max_model_len}): swap them"
            )
        if not 1 <= self.threshold <= self.short.max_model_len:
            raise ValueError(f"b_short must be within 1..{self.short.max_model_len} (the short context)")

    @property
    def threshold(self) -> int:
        return self.short.max_model_len if self.b_short is None else self.b_short

    def pool(self, name: str) -> PoolShape:
        return {"short": self.short, "long": self.long}[name]

    def router_shape(self) -> RouterShape:
        return RouterShape(
            short_context=str(self.short.max_model_len),
            long_context=str(self.long.max_model_len),
            b_short=str(self.threshold),
            short_capacity=str(self.short.capacity),
            long_capacity=str(self.long.capacity),
        )

    def router_flags(self) -> list[str]:
        return router_flags(self.router_shape())


DEFAULT_FLEET = FleetShape()
