"""A continuous-batching scheduler in the shape of vLLM's: the reason a pool has a capacity.

Each engine step admits waiting sequences FIFO while there are free slots (``max_num_seqs``) and
free KV blocks, then lets every running sequence produce one token. A sequence's KV cache grows by
one token per step; when a block cannot be found the newest running sequence is preempted (its
blocks freed, it goes back to the head of the queue and later recomputes prompt + output so far),
as vLLM does. A step takes prefill time for the tokens admitted plus a decode time that grows with
the batch size and with the KV held, all times the latency scale, so a pool with more slots and a
bigger cache serves more per second, and a long-context pool is slower per token.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections import Counter, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from extproc.emulator.engine_args import EmulatorConfig


class State(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    ABORTED = "aborted"


@dataclass(eq=False)
class Sequence:
    prompt_tokens: int
    target: int  # tokens to generate
    finish_reason: str
    generated: int = 0
    kv_tokens: int = 0  # tokens whose KV is held (0 while waiting)
    state: State = State.WAITING
    preemptions: int = 0
    prefilled: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def done(self) -> bool:
        return self.state in (State.FINISHED, State.ABORTED)


class Engine:
    def __init__(self, cfg: EmulatorConfig) -> None:
        self.cfg = cfg
        self.capacity_blocks = cfg.kv_capacity_blocks
        self.used_blocks = 0
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # admission order: the last one is the newest
        self.preemptions_total = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.finished: Counter[str] = Counter()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="emulator-engine")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for seq in [*self.running, *self.waiting]:
            self.abort(seq)

    # ---- public API ------------------------------------------------------------------------
    def submit(self, prompt_tokens: int, target: int, finish_reason: str) -> Sequence:
        seq = Sequence(prompt_tokens=prompt_tokens, target=target, finish_reason=finish_reason)
        self.waiting.append(seq)
        self._wake.set()
        return seq

    def abort(self, seq: Sequence) -> None:
        """Drop a sequence whose client went away (or on shutdown), freeing its slot and blocks."""
        if seq.state is State.WAITING:
            self.waiting.remove(seq)
        elif seq.state is State.RUNNING:
            self._release(seq)
        else:
            return
        seq.state = State.ABORTED
        self.finished["abort"] += 1
        seq.changed.set()

    @staticmethod
    async def progress(seq: Sequence) -> AsyncIterator[int]:
        """Yield the number of tokens generated so far each time it grows, until the sequence ends."""
        seen = 0
        while True:
            seq.changed.clear()
            if seq.generated > seen:
                seen = seq.generated
                yield seen
            if seq.done:
                return
            await seq.changed.wait()

    @property
    def kv_usage(self) -> float:
        return self.used_blocks / self.capacity_blocks if self.capacity_blocks else 0.0

    # ---- scheduling ------------------------------------------------------------------------
    def _blocks(self, tokens: int) -> int:
        return -(-tokens // self.cfg.block_size)

    @property
    def _free_blocks(self) -> int:
        return self.capacity_blocks - self.used_blocks

    def _release(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.used_blocks -= self._blocks(seq.kv_tokens)
        seq.kv_tokens = 0

    def _admit(self) -> int:
        """Move waiting sequences to running (FIFO, head-of-line blocking); return tokens to prefill."""
        prefill = 0
        while self.waiting and len(self.running) < self.cfg.max_num_seqs:
            seq = self.waiting[0]
            tokens = seq.prompt_tokens + seq.generated  # a preempted sequence recomputes its output too
            if self._blocks(tokens + 1) > self._free_blocks:
                break
            self.waiting.popleft()
            seq.state = State.RUNNING
            seq.kv_tokens = tokens
            self.used_blocks += self._blocks(tokens)
            self.running.append(seq)
            prefill += tokens
            if not seq.prefilled:
                seq.prefilled = True
                self.prompt_tokens_total += seq.prompt_tokens
        return prefill

    def _preempt(self, victim: Sequence) -> None:
        self._release(victim)
        victim.state = State.WAITING
        victim.preemptions += 1
        self.preemptions_total += 1
        self.waiting.appendleft(victim)

    def _grow(self) -> list[Sequence]:
        """Reserve KV for one more token per running sequence, oldest first, preempting the newest."""
        advancing: list[Sequence] = []
        for seq in list(self.running):
            if seq.state is not State.RUNNING:
                continue
            extra = self._blocks(seq.kv_tokens + 1) - self._blocks(seq.kv_tokens)
            while extra > self._free_blocks:
                victim = self.running[-1]
                self._preempt(victim)
                if victim is seq:
                    break
            if seq.state is State.RUNNING:
                seq.kv_tokens += 1
                self.used_blocks += extra
                advancing.append(seq)
        return advancing

    def _step_seconds(self, prefill_tokens: int, batch: int) -> float:
        cfg = self.cfg
        ms = prefill_tokens * cfg.prefill_ms_per_token
        if batch:
            kv_k = self.used_blocks * cfg.block_size / 1000
            ms += cfg.decode_ms_per_step + cfg.decode_ms_per_seq * batch + cfg.decode_ms_per_1k_kv_tokens * kv_k
        return ms * cfg.latency_scale / 1000

    def _emit(self, advancing: list[Sequence]) -> None:
        for seq in advancing:
            if seq.state is not State.RUNNING:
                continue  # aborted while the step ran
            seq.generated += 1
            self.generation_tokens_total += 1
            if seq.generated >= seq.target:
                self._release(seq)
                seq.state = State.FINISHED
                self.finished[seq.finish_reason] += 1
            seq.changed.set()

    def begin_step(self) -> tuple[float, list[Sequence]]:
        """One iteration's decisions: admissions, KV for the next token (preempting where it runs out),
        and how long the iteration takes. The caller lets that time pass (the event loop here, a virtual
        clock in tests/test_scheduler_agreement.py, which holds the planner's scheduler to this one) and
        then calls ``end_step`` with the sequences that advance."""
        prefill = self._admit()
        advancing = self._grow()
        return self._step_seconds(prefill, len(advancing)), advancing

    def end_step(self, advancing: list[Sequence]) -> None:
        self._emit(advancing)

    async def _loop(self) -> None:
        while True:
            if not self.waiting and not self.running:
                self._wake.clear()
                await self._wake.wait()
            seconds, advancing = self.begin_step()
            await asyncio.sleep(seconds)
            self.end_step(advancing)
