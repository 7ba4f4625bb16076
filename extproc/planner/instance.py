"""One vLLM instance as a discrete-event process: continuous batching, chunked prefill, paged KV.

The scheduler mirrors vLLM's: every iteration, running sequences first get their decode token (and a
new KV block whenever their last block is full; when none is free the newest running sequence is
preempted, its blocks freed, and it is recomputed later from the head of the queue), then prefill
chunks of running and waiting sequences fill the token budget, FCFS; a waiting sequence is admitted
only while there is a free slot and blocks for its chunk.

Speed comes from not simulating decode iterations one by one. Between two events that change the
batch (a completion, a block shortage, an admissible arrival) every iteration decodes the same
sequences, so a whole run of k iterations is one event: sequence ``i`` holds ``c_i + s`` tokens at
instance step ``s``, the context read grows by ``n`` per iteration (duration ``A + B·j`` for the
j-th), and the iteration at which a sequence needs a new block depends only on ``c_i mod
block_size``, so counting sequences per residue tells how many blocks any run of iterations takes.
Prefill iterations are events of their own.

Per-token latency (vLLM's inter-token latency) is counted into a histogram as runs end: every decoding
sequence gets a token per iteration, whose gap is that iteration's duration (a prefill chunk sharing the
iteration stretches it for all of them); a preempted sequence's next token comes after its recompute,
one gap as long as the stall. Only iterations ending inside the measurement window count.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable

from extproc.planner.latency_hist import LatencyHistogram
from extproc.planner.profiles import InstanceProfile


class SimRequest:
    __slots__ = (
        "arrival",
        "blocks",
        "c",
        "computed",
        "decoding",
        "epoch",
        "fin",
        "finish",
        "first_token",
        "generated",
        "idx",
        "output",
        "preemptions",
        "prompt",
        "stalled",
        "target",
    )

    def __init__(self, idx: int, arrival: float, prompt: int, output: int) -> None:
        self.idx = idx
        self.arrival = arrival
        self.prompt = prompt
        self.output = output
        self.target = prompt  # tokens to prefill: the prompt, plus generated tokens after a preemption
        self.computed = 0
        self.blocks = 0  # KV blocks held while prefilling (decoders' blocks are implied by c_i + s)
        self.generated = 0
        self.decoding = False
        self.c = 0  # tokens held = c + instance step, while decoding
        self.fin = 0  # instance step at which decoding completes
        self.epoch = 0  # bumps on preemption: invalidates the stale completion-heap entry
        self.first_token = -1.0
        self.finish = -1.0
        self.preemptions = 0
        self.stalled = -1.0  # when a preemption interrupted its decoding (its next token's gap starts)


FinishHook = Callable[[SimRequest, float], None]


class Instance:
    def __init__(
        self,
        profile: InstanceProfile,
        on_finish: FinishHook,
        itl: LatencyHistogram | None = None,
        window: tuple[float, float] = (0.0, math.inf),
    ) -> None:
        p = self.p = profile
        self.on_finish = on_finish
        self.itl = itl
        self.lo, self.hi = window
        self._floor = p.step_floor_s + p.allreduce_floor_s
        self._per, self._knee, self._ar = p.step_per_token_s, p.step_knee_tokens, p.allreduce_per_token_s
        self._kv, self._attn = p.kv_read_per_token_s, p.prefill_attn_per_pair_s
        self.bs = p.block_size
        self.free = p.kv_blocks
        self.running: dict[SimRequest, None] = {}  # admission order; the last is the newest
        self.prefilling: list[SimRequest] = []
        self.waiting: deque[SimRequest] = deque()
        self.n_dec = 0
        self.base = 0  # sum of c_i over decoders: tokens read = base + n_dec * step
        self.residues = [0] * p.block_size
        self.completions: list[tuple[int, int, SimRequest, int]] = []
        self.steps = 0
        self.version = 0  # bumps when the planned event moves
        self.active = False
        self.t0 = self.end = 0.0
        self.k = 0
        self.a = self.b = 0.0
        self.chunks: list[tuple[SimRequest, int]] | None = None
        self.busy_s = 0.0
        self.seq_s = 0.0  # integral of batch size over time
        self.preemptions = 0

    @property
    def outstanding(self) -> int:
        return len(self.running) + len(self.waiting)

    def fits(self, req: SimRequest) -> bool:
        return req.prompt + req.output <= self.p.max_model_len

    def queue_full(self) -> bool:
        cap = self.p.max_waiting
        return cap is not None and len(self.waiting) >= cap

    def arrive(self, req: SimRequest, now: float) -> float | None:
        """Queue a request; returns the new time of this instance's next event when it moved."""
        self.waiting.append(req)
        if not self.active:
            return self._plan(now)
        if self.chunks is None and len(self.waiting) == 1 and len(self.running) < self.p.max_num_seqs:
            return self._cut(now)
        return None

    def _cut(self, now: float) -> float | None:
        """End the current decode run at the iteration boundary after ``now`` so the arrival joins."""
        a, b, dt = self.a, self.b, now - self.t0
        if b > 0.0:
            h = a - b / 2.0
            j = max(1, math.ceil((-h + math.sqrt(h * h + 2.0 * b * dt)) / b))
        else:
            j = max(1, math.ceil(dt / a))
        while j > 1 and (j - 1) * a + b * (j - 1) * (j - 2) / 2.0 >= dt:
            j -= 1
        while j < self.k and j * a + b * j * (j - 1) / 2.0 < dt:
            j += 1
        if j >= self.k:
            return None
        self.k = j
        self.end = self.t0 + j * a + b * j * (j - 1) / 2.0
        self.version += 1
        return self.end

    def _blocks_needed(self, s: int, k: int) -> int:
        """KV blocks the decoders take over iterations s .. s+k-1."""
        bs, res = self.bs, self.residues
        total = (k // bs) * self.n_dec
        for j in range(k % bs):
            total += res[-(s + j) % bs]
        return total

    def _max_steps(self, s: int, free: int) -> int:
        """How many decode iterations from step s the free blocks can feed."""
        n, bs, res = self.n_dec, self.bs, self.residues
        cycles = free // n
        k, rem = cycles * bs, free - cycles * n
        for j in range(bs):
            need = res[-(s + k + j) % bs]
            if need > rem:
                return k + j
            rem -= need
        return k + bs

    def complete(self) -> float | None:
        """The planned run of iterations has ended: apply it, then plan the next one."""
        now, k, s = self.end, self.k, self.steps
        dt = now - self.t0
        chunks = self.chunks
        self.busy_s += dt
        self.seq_s += (self.n_dec + (len(chunks) if chunks else 0)) * dt
        if self.n_dec:
            self.free -= self._blocks_needed(s, k)
            if self.itl is not None and self.lo <= now <= self.hi:
                if chunks:
                    self.itl.add(dt, self.n_dec)
                else:
                    self.itl.add_run(self.a, self.b, k, self.n_dec)
        self.steps = s = s + k
        if chunks:
            for req, m in chunks:
                req.computed += m
                if req.computed >= req.target:
                    self._prefilled(req, now, s)
        heap = self.completions
        while heap and heap[0][0] <= s:
            _, _, req, epoch = heapq.heappop(heap)
            if epoch == req.epoch:
                self._retire_decoder(req, s)
                self._done(req, now)
        self.active = False
        return self._plan(now)

    def _prefilled(self, req: SimRequest, now: float, s: int) -> None:
        self.prefilling.remove(req)
        req.generated += 1
        if req.first_token < 0.0:
            req.first_token = now
        elif req.stalled >= 0.0:
            if self.itl is not None and self.lo <= now <= self.hi:
                self.itl.add(now - req.stalled)
            req.stalled = -1.0
        if req.generated >= req.output:
            self.free += req.blocks
            req.blocks = 0
            self._done(req, now)
            return
        req.decoding = True
        req.c = c = req.target - s
        req.fin = s + req.output - req.generated
        self.n_dec += 1
        self.base += c
        self.residues[c % self.bs] += 1
        req.blocks = 0
        heapq.heappush(self.completions, (req.fin, req.idx, req, req.epoch))

    def _retire_decoder(self, req: SimRequest, s: int) -> None:
        c = req.c
        self.free += -(-(c + s) // self.bs)
        self.n_dec -= 1
        self.base -= c
        self.residues[c % self.bs] -= 1
        req.decoding = False

    def _done(self, req: SimRequest, now: float) -> None:
        del self.running[req]
        req.finish = now
        self.on_finish(req, now)

    def _preempt_newest(self, s: int, now: float) -> None:
        req = next(reversed(self.running))
        del self.running[req]
        if req.decoding:
            req.stalled = now
            self._retire_decoder(req, s)
            req.generated = req.output - (req.fin - s)
            req.target = req.prompt + req.generated
            req.epoch += 1
        else:
            self.prefilling.remove(req)
            self.free += req.blocks
        req.computed = req.blocks = 0
        req.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(req)

    def _plan(self, now: float) -> float | None:
        p, bs, s = self.p, self.bs, self.steps
        while True:
            need = 0
            if self.n_dec:
                need = self.residues[-s % bs]
                while need > self.free:
                    self._preempt_newest(s, now)
                    need = self.residues[-s % bs] if self.n_dec else 0
            chunks = self._schedule_prefill(self.free - need, p.max_num_batched_tokens - self.n_dec)
            if chunks or self.n_dec:
                break
            if not self.running:
                self.active = False
                return None
            self._preempt_newest(s, now)  # every running sequence stalls on blocks: free some
        self.active = True
        self.t0 = now
        n = self.n_dec
        read = self.base + n * s
        if chunks:
            tokens, attn = n, 0.0
            for req, m in chunks:
                tokens += m
                attn += m * (req.computed + m / 2.0)
            dt = self._step(tokens) + self._kv * read + self._attn * attn
            self.chunks, self.k = chunks, 1
            self.end = now + dt
        else:
            heap = self.completions
            while heap[0][3] != heap[0][2].epoch:
                heapq.heappop(heap)
            k = min(heap[0][0] - s, self._max_steps(s, self.free))
            self.a = a = self._step(n) + self._kv * read
            self.b = b = self._kv * n
            self.chunks, self.k = None, k
            self.end = now + k * a + b * k * (k - 1) / 2.0
        self.version += 1
        return self.end

    def _step(self, tokens: int) -> float:
        """``InstanceProfile.step_s``, inlined: the hottest arithmetic of the simulator."""
        over = tokens - self._knee
        return self._floor + self._ar * tokens + (self._per * over if over > 0 else 0.0)

    def _schedule_prefill(self, free: int, budget: int) -> list[tuple[SimRequest, int]]:
        """Chunks for this iteration: running prefills first, then admissions; takes their blocks."""
        bs, start = self.bs, free
        chunks: list[tuple[SimRequest, int]] = []
        for req in self.prefilling:
            if budget <= 0:
                break
            m = min(req.target - req.computed, budget)
            nb = -(-(req.computed + m) // bs) - req.blocks
            if nb > free:
                nb = free
                m = (req.blocks + free) * bs - req.computed
                if m <= 0:
                    continue
            req.blocks += nb
            free -= nb
            budget -= m
            chunks.append((req, m))
        waiting, running = self.waiting, self.running
        cap = self.p.max_num_seqs
        while waiting and budget > 0 and len(running) < cap:
            req = waiting[0]
            m = min(req.target, budget)
            nb = -(-m // bs)
            if nb > free:
                break
            waiting.popleft()
            running[req] = None
            self.prefilling.append(req)
            req.blocks = nb
            free -= nb
            budget -= m
            chunks.append((req, m))
        self.free -= start - free
        return chunks
