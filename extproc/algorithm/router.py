"""The whole routing policy behind two calls: ``route`` a request, ``finish`` it with its outcome.

Everything that decides where traffic goes and what the router learns lives here: the estimate,
the pool decision under pool pressure, which outcomes to observe (every one until a category has
converged, then a sampled share), how the request is counted against its pool (tracked until
``finish`` when observed, else leased), and learning from the observed usage. The ext_proc server
translates Envoy messages into these calls and the planner's simulator makes the same calls from
simulated time, so the simulated router is the production router. Time and randomness are
injected (``clock``, ``rng``) so both drivers can replay a workload exactly.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from extproc.algorithm import endpoints
from extproc.algorithm.budget import BudgetParams, Estimate, attribute, estimate, framing_tokens, output_limit
from extproc.algorithm.calibration import CalibrationParams, Calibrator, Observation
from extproc.algorithm.categories import Categorizer, CategoryParams
from extproc.algorithm.dispatch import LONG, SHORT, UNPARSEABLE, Decision, DispatchPolicy, decide
from extproc.algorithm.endpoints import templated
from extproc.algorithm.exact_band import ExactBand, serialize
from extproc.algorithm.features import text_features
from extproc.algorithm.linear_estimator import MESSAGES, REQUEST, TOOLS, EstimatorParams, LinearEstimator
from extproc.algorithm.pressure import CapacityParams, InFlightPressure, PressureSource
from extproc.algorithm.prompt_memory import PromptMemory
from extproc.algorithm.request_shape import RequestShape, shape_from_body
from extproc.algorithm.truncation import context_truncated, near_context

Clock = Callable[[], float]
# The v1 estimate screens v2: when the decision is the same at half and at twice the v1 prompt
# estimate, no estimator can change it, and the character-class pass is skipped (most requests are
# far from every threshold). Only requests the screen cannot settle pay for features.
SCREEN_FACTOR = 2.0


# Share of B_short around it in which a request's prompt is counted by the engine whatever the learned
# band says: the band is fitted on warm-up traffic and is narrow for text unlike it (see _estimate_linear).
ENGINE_COUNT_MIN_BAND = 0.10


@dataclass(frozen=True, slots=True)
class Ticket:
    """One routed request, handed out by ``route`` and handed back to ``finish`` exactly once.

    ``observe`` is the router's request to its caller: True means "bring me this request's usage"
    (the server then processes the response; the request is counted in flight until ``finish``);
    False means the request holds a lease instead and only its response status is wanted: ``wants``
    says whether that response still teaches something (an error from the short pool, an answer the
    net moved to the long pool), and only then does ``finish`` learn from it. ``shape`` and
    ``estimate`` are None for a request the caller could not read (routed long with the caller's
    reason). ``served_pool`` is set by ``moved`` when Envoy's net resent the request to another pool.
    ``must_read``: a short-pool answer near the boundary, observed whatever sampling drew, because it
    may come back cut by the short context (``extproc.algorithm.truncation``); ``observe`` is then True.
    """

    decision: Decision
    observe: bool
    started_at: float  # the router's clock at ``route``; ``finish`` measures the duration from it
    shape: RequestShape | None = None
    estimate: Estimate | None = None
    short_pressure: float = 0.0  # the pool pressures the decision used (1.0 = at capacity)
    long_pressure: float = 0.0
    served_pool: str = ""
    must_read: bool = False

    @property
    def pool(self) -> str:
        """The pool that holds the request now: the routed one unless the net moved it."""
        return self.served_pool or self.decision.pool


@dataclass(frozen=True, slots=True)
class Outcome:
    """What came back for a ticket. ``prompt_tokens`` is the backend's count (``usage`` or the figure
    in a context-length 400); None when the request ended without one. ``lower_bound``: the backend
    stopped counting ("at least N input tokens"): a floor for this prompt only, never a sample.
    ``status`` is the response's HTTP status, 0 when unknown (the simulator's completions).
    ``trusted``: the caller knows this count is the engine's own answer to a request the estimate
    misplaced (the long pool's usage after the net resent it, or the usage of an answer the short
    context cut): never rejected as an outlier (the fit, not the engine, was wrong about that text),
    and remembered for that prompt. Only the hard bytes/token bounds still apply.
    ``length_stop``: some sequence of the answer finished with ``"length"`` (a Responses answer
    ``incomplete`` for ``max_output_tokens``)."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    status: int = 0
    lower_bound: bool = False
    trusted: bool = False
    length_stop: bool = False


NO_OUTCOME = Outcome()


@dataclass(frozen=True, slots=True)
class Learned:
    category: str
    observation: Observation
    estimated_prompt_tokens: int
    # Signed (estimate - actual) / actual * 100 at the ratio used for routing; None when the observation
    # says nothing about the estimate (zero tokens, or a bytes/token no tokenizer produces: a broken or
    # lying backend would otherwise report an error near -100 %). Outliers keep theirs: plausible, real.
    error_pct: float | None


class BudgetRouter:
    def __init__(
        self,
        budget: BudgetParams | None = None,
        policy: DispatchPolicy | None = None,
        calibration: CalibrationParams | None = None,
        categories: CategoryParams | None = None,
        estimator: EstimatorParams | None = None,
        exact: ExactBand | None = None,
        *,
        pressure: PressureSource | None = None,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        """``pressure`` defaults to in-flight counting at the default capacities on ``clock``;
        ``rng`` draws the sampled observations of converged categories (seed it to replay)."""
        self.budget = budget or BudgetParams()
        self.policy = policy or DispatchPolicy()
        self.categorizer = Categorizer(categories)
        self.calibrator = Calibrator(calibration, self.categorizer.params.enabled)
        params = estimator or EstimatorParams()
        # The ratio calibrator always learns: it is the ``ratio`` estimator, v2's screen and cold start.
        self.linear = LinearEstimator(params, self.calibrator.params, self.budget) if params.kind == "linear" else None
        self.exact = exact if self.linear is not None else None
        self.pressure: PressureSource = (
            pressure if pressure is not None else InFlightPressure.for_pools(CapacityParams(), clock)
        )
        self.clock = clock
        self.rng = rng or random.Random()
        self.memory = PromptMemory(params.prompt_memory)

    def shape(self, endpoint: str, body: Any) -> RequestShape:
        """Read a parsed request body with this router's categories; raises ``ShapeError``."""
        return shape_from_body(endpoint, body, self.categorizer)

    def estimate(self, shape: RequestShape) -> Estimate:
        return estimate(shape, self.calibrator.ratio, self.budget)

    def decide(
        self,
        shape: RequestShape,
        short_pressure: float = 0.0,
        long_pressure: float = 0.0,
        estimate: Estimate | None = None,
    ) -> tuple[Estimate, Decision]:
        """Estimate and pool choice at the given pressures, with no side effect (no counting, no
        sampling): what ``route`` decides, for callers that only want to look. ``estimate``: one made
        already (``estimate_request``, or ``with_engine_count``), used as it is."""
        est = self.estimate_request(shape) if estimate is None else estimate
        return est, decide(est.total, self.policy, short_pressure, long_pressure, est.output_defaulted)

    def estimate_request(self, shape: RequestShape, exact: bool = True) -> Estimate:
        """The estimate routing uses: v1, refined by v2 where a threshold lies within the screen.
        ``exact`` False skips the offline exact band (the caller asks the engine first)."""
        est = self.estimate(shape)
        if self.linear is None or shape.known_prompt_tokens is not None or not shape.texts:
            return self._remembered(shape, est)
        out, pol = est.output_tokens, self.policy
        low, high = est.prompt_tokens / SCREEN_FACTOR + out, est.prompt_tokens * SCREEN_FACTOR + out
        # no threshold inside the screen: no estimate in it decides otherwise
        if low <= pol.b_short < high or low <= pol.short_context < high or low <= pol.long_context < high:
            est = self._estimate_linear(shape, est, exact)
        return self._remembered(shape, est)

    def _remembered(self, shape: RequestShape, est: Estimate) -> Estimate:
        """``est`` raised to what the engine said of this very prompt before, where that decides."""
        if shape.known_prompt_tokens is not None or not self.memory.worth_looking(est.prompt_tokens):
            return est
        if decide(est.total, self.policy, output_defaulted=est.output_defaulted).pool != SHORT:
            return est
        found = self.memory.lookup(shape)
        if found is not None and found.tokens > est.prompt_tokens:  # what the engine said of this prompt
            est = replace(est, prompt_tokens=found.tokens, total=found.tokens + est.output_tokens)
        return est

    def engine_count_pool(self, shape: RequestShape, est: Estimate) -> str | None:
        """The pool whose engine should count this prompt exactly, or None when no count is wanted.

        Wanted where the estimate's uncertainty band holds ``B_short`` (no estimate in the band can
        tell the side; a few per cent of traffic) and the engine's ``/tokenize`` takes the request as
        it is: its API is one ``/tokenize`` renders, and no image part (the engine would have to fetch
        and process it). The pool is the one the estimate chose: it serves the same model, and the
        answer spreads with the traffic."""
        api = endpoints.named(shape.endpoint)
        if not est.in_band or est.engine_counted is not None or api is None or not api.tokenize or shape.images:
            return None
        return decide(est.total, self.policy, output_defaulted=est.output_defaulted).pool

    def with_engine_count(self, shape: RequestShape, est: Estimate, count: int) -> Estimate:
        """``est`` with the engine's own count of the prompt (chat template, tools and special tokens
        included): exact, so no margin is added. The features stay for learning from the answer."""
        prompt = count + shape.images * self.budget.image_tokens
        return replace(est, prompt_tokens=prompt, total=prompt + est.output_tokens, engine_counted=count)

    def linear_category(self, shape: RequestShape) -> str:
        """The v2 bucket of a request: the structured category when tool JSON outweighs the text.
        Tool-heavy requests tokenise alike whatever the short message beside them says, and their
        errors are far smaller than prose's; sharing prose's bucket would widen prose's margin and
        hide theirs."""
        if shape.structured_bytes > shape.text_bytes:
            return self.categorizer.structured()
        return shape.category

    def _vector(self, shape: RequestShape) -> tuple[list[float], str | None]:
        """The v2 feature vector and the serialised tool JSON (None if it cannot be serialised; the
        exact band reuses it). The JSON is class-counted with the texts, so its digits, quotes and
        keys are seen too; JSON that cannot be serialised adds its bytes only."""
        assert self.linear is not None
        structured = serialize(shape.structured) if shape.structured else ""
        texts = (*shape.texts, structured) if structured else shape.texts
        features = text_features(texts, self.linear.params.sample_bytes)
        if structured is None and shape.structured_bytes:
            features = (features[0] + shape.structured_bytes, *features[1:])
        messages = shape.messages if templated(shape.endpoint) else 0
        return self.linear.vector(features, shape.structured_bytes, messages, shape.tool_items), structured

    def _estimate_linear(self, shape: RequestShape, v1: Estimate, exact: bool = True) -> Estimate:
        assert self.linear is not None
        x, structured = self._vector(shape)
        category = self.linear_category(shape)
        lin = self.linear.estimate(shape.model, category, x, self.policy.b_short)
        images = shape.images * self.budget.image_tokens
        out = v1.output_tokens
        prompt, counted = lin.routed + images, None
        b_short = self.policy.b_short
        in_band = lin.low + images + out <= b_short < lin.high + images + out
        if exact and self.exact is not None and in_band and structured is not None:
            counted = self.exact.count(shape.model, shape.texts, structured)
            if counted is not None:
                w = self.linear.bucket(shape.model, category).weights
                guess = w[MESSAGES] * x[MESSAGES] + w[TOOLS] * x[TOOLS] + w[REQUEST] * x[REQUEST]
                # The fit's framing weights may have absorbed per-tool cost into its byte weights (tool
                # JSON is bytes too) and read ~0: until the template residual is learned, the
                # configured framing is the floor (16 tools of a real template cost ~100 tokens).
                guess = max(guess, float(framing_tokens(shape, self.budget)))
                key = self.linear.model_key(shape.model)
                prompt = self.exact.routed(
                    key, category, counted, shape.messages, shape.tool_items, guess, self.linear.z
                )
                prompt += images
        ratio = shape.text_bytes / max(1.0, lin.point) if shape.text_bytes else v1.ratio
        # An engine count is cheap next to a request cut by the short context: ask for every request whose
        # point estimate lies within ENGINE_COUNT_MIN_BAND of B_short too, not only where the learned band
        # reaches it (through real vLLM, held-out code read 2 % low, outside its band, and was cut).
        near = abs(lin.point + images + out - b_short) <= ENGINE_COUNT_MIN_BAND * b_short
        band = (in_band or near) and structured is not None and counted is None
        return Estimate(prompt, out, prompt + out, ratio, v1.output_defaulted, tuple(x), counted, in_band=band)

    def route(
        self, shape: RequestShape | None, unreadable: str = UNPARSEABLE, estimate: Estimate | None = None
    ) -> Ticket:
        """Decide the pool for one request and count it against that pool.

        ``shape`` None is a request the caller could not read: it takes the safe (long) route with
        reason ``unreadable`` and is never observed. Every ticket must reach ``finish`` once, when
        the request ends (for an unobserved ticket it learns only from what ``wants`` asked for).
        ``estimate``: the request's estimate when the caller made it already (an engine count).
        """
        now = self.clock()
        if shape is None:
            self.pressure.lease(LONG)
            return Ticket(Decision(LONG, unreadable), False, now)
        p = self.pressure
        short_pressure, long_pressure = p.pressure(SHORT), p.pressure(LONG)
        est, decision = self.decide(shape, short_pressure, long_pressure, estimate)
        sampled = self._observes(shape)  # drawn first: must_read leaves the sampling sequence as it was
        must_read = self.must_read(shape, est, decision.pool)
        observe = sampled or must_read
        if observe:
            p.acquire(decision.pool)
        else:
            p.lease(decision.pool)
        return Ticket(decision, observe, now, shape, est, short_pressure, long_pressure, must_read=must_read)

    def must_read(self, shape: RequestShape, est: Estimate, pool: str) -> bool:
        """Whether the answer must be read whatever sampling says: a short-pool answer near the short
        context may come back cut (token-id prompts are exact: theirs cannot, unless misconfigured)."""
        if pool != SHORT or shape.known_prompt_tokens is not None:
            return False
        return near_context(est.prompt_tokens, est.output_tokens, self.policy.short_context)

    def truncated(self, ticket: Ticket, outcome: Outcome) -> bool:
        """Whether the pool that answered cut the answer at the end of its context (pure: the answer's
        ``usage`` against the pool's context and the request's output limit). On the short pool that
        is a truncation caused by routing; on the long pool the request did not fit any pool."""
        shape, est = ticket.shape, ticket.estimate
        prompt, completion = outcome.prompt_tokens, outcome.completion_tokens
        if shape is None or est is None or prompt is None or completion is None or outcome.lower_bound:
            return False
        if outcome.status >= 400:
            return False
        context = self.policy.short_context if ticket.pool == SHORT else self.policy.long_context
        longest = est.prompt_tokens if shape.prompts > 1 else None
        sequences = shape.prompts * shape.choices
        return context_truncated(
            prompt, completion, context, output_limit(shape), sequences, longest, outcome.length_stop
        )

    def moved(self, ticket: Ticket, pool: str) -> Ticket:
        """Envoy's net resent the request to ``pool`` (the short pool rejected or dropped it): an
        observed request now counts against ``pool``. The rejected admission was no request's life,
        so the first pool's slot is released without a duration. Returns the ticket to finish."""
        if pool == ticket.pool:
            return ticket
        if ticket.observe:
            self.pressure.release(ticket.pool)
            self.pressure.acquire(pool)
        return replace(ticket, served_pool=pool)

    def wants(self, ticket: Ticket, status: int) -> bool:
        """Whether a response with ``status`` can teach something, so its caller should read it.

        Every observed one (its usage); of the others only what sampling would miss and the
        estimator needs most: an error from the short pool and a 400 from either pool (a
        context-length 400 carries the prompt size), and an answer the net moved off the short pool
        (its usage is the exact size of a request the estimate sent to the wrong pool)."""
        if ticket.shape is None:
            return False
        if ticket.observe or ticket.pool != ticket.decision.pool:
            return True
        return status == 400 or (status >= 400 and ticket.pool == SHORT)

    def follows(self, ticket: Ticket) -> bool:
        """Whether the caller should follow this ticket's response at all (its status, then the body
        if ``wants`` asks): one more gRPC message per exchange, the largest cost of an unsampled one.

        Every observed ticket (sampling, or a flag that forces reading, such as a near-boundary
        answer, makes it observed). Of the others, only those whose answer could be a size failure:
        a request that fits its pool's context even at the bytes/token floor (``min_ratio``, the
        ratio below which an observation is rejected as out of bounds) with its whole output limit
        cannot be refused for its size, so its status teaches nothing that sampling does not (an
        overflow count would be rejected out of bounds; an answer the net moved after a 5xx is an
        ordinary sample). The simulator never follows statuses, so this changes no replay."""
        if ticket.observe:
            return True
        shape = ticket.shape
        if shape is None:
            return False
        context = self.policy.short_context if ticket.decision.pool == SHORT else self.policy.long_context
        return self._prompt_ceiling(shape) + (output_limit(shape) or 0) > context

    def _prompt_ceiling(self, shape: RequestShape) -> int:
        """The most prompt tokens a request can have that an observation would still accept."""
        if shape.known_prompt_tokens is not None:
            return shape.known_prompt_tokens
        nbytes = shape.text_bytes + shape.structured_bytes
        images = shape.images * self.budget.image_tokens
        return math.ceil(nbytes / self.calibrator.params.min_ratio) + framing_tokens(shape, self.budget) + images

    def finish(self, ticket: Ticket, outcome: Outcome = NO_OUTCOME) -> Learned | None:
        """The request ended: release its pool slot if it was observed, and learn from ``outcome`` if
        the router wants it (``wants``: observed, or an unobserved request's error or retried answer).

        Returns what was learned (accepted or the reason it was rejected), or None when there was
        nothing to learn: the outcome carries no prompt tokens or is not one the router wants.
        """
        if ticket.observe:
            self.pressure.release(ticket.pool, self.clock() - ticket.started_at)
        if outcome.prompt_tokens is None or ticket.shape is None or not self.wants(ticket, outcome.status):
            return None
        if outcome.lower_bound:
            return self.learn_bound(ticket.shape, outcome.prompt_tokens, ticket.estimate)
        return self.learn(ticket.shape, outcome.prompt_tokens, ticket.estimate, trusted=outcome.trusted)

    def _observes(self, shape: RequestShape) -> bool:
        """Every response until the category converged, then a ``converged_sample_rate`` share;
        never one whose prompt size was exact already (token-id prompts teach no ratio)."""
        if shape.known_prompt_tokens is not None:
            return False
        rate = self.calibrator.params.converged_sample_rate
        if rate >= 1.0 or not self.calibrator.converged(shape.category):
            return True
        return self.rng.random() < rate

    def learn(
        self, shape: RequestShape, prompt_tokens: int, routed: Estimate | None = None, trusted: bool = False
    ) -> Learned:
        """Feed one observed ``usage.prompt_tokens`` back; ``routed`` is the estimate made at request time.
        ``trusted`` (see ``Outcome``): the engine's count of a misplaced request, never an outlier, and
        remembered for this prompt.

        ``finish`` calls this for the outcomes the policy observes; offline tools that measure the
        estimator on every request (``decide`` then ``learn``) call it directly."""
        category, nbytes, tokens, est = self._attributed(shape, prompt_tokens, routed)
        observation = self.calibrator.observe(category, nbytes, tokens, trusted)
        # A batch /v1/completions request (learn_text_bytes set) is routed by its longest prompt while its
        # usage counts every prompt: the linear model's features describe the longest one only, so only
        # the ratio estimator (which pairs the usage with all the bytes) learns from a batch.
        batch = shape.learn_text_bytes is not None
        if (
            self.linear is not None
            and shape.known_prompt_tokens is None
            and not batch
            and (shape.texts or shape.structured_bytes)
        ):
            x = routed.features if routed is not None and routed.features is not None else self._vector(shape)[0]
            text_tokens = prompt_tokens - shape.images * self.budget.image_tokens
            category = self.linear_category(shape)
            total = (prompt_tokens + routed.output_tokens) if routed is not None else None
            observation = self.linear.observe(
                shape.model, category, x, text_tokens, trusted, total_share=_share(total, self.policy.b_short)
            )
            if self.exact is not None and routed is not None and routed.counted is not None:
                key = self.linear.model_key(shape.model)
                self.exact.learn(key, category, routed.counted, text_tokens, shape.messages, shape.tool_items)
        if trusted and observation is Observation.ACCEPTED and shape.known_prompt_tokens is None:
            self.memory.remember(shape, prompt_tokens, True, est)
        return Learned(category, observation, est, _error_pct(observation, est, prompt_tokens))

    def learn_bound(self, shape: RequestShape, min_prompt_tokens: int, routed: Estimate | None = None) -> Learned:
        """Feed back a lower bound on the prompt tokens ("at least N input tokens"): a floor for this
        prompt (``PromptMemory``), never a sample of its category. Far below what the bytes could
        hold, it is a broken count and ignored (the hard bounds, as for samples)."""
        category, _, _, est = self._attributed(shape, min_prompt_tokens, routed)
        most = (shape.text_bytes + shape.structured_bytes) / self.calibrator.params.min_ratio
        most += shape.images * self.budget.image_tokens + framing_tokens(shape, self.budget)
        if not (shape.text_bytes + shape.structured_bytes > 0 and min_prompt_tokens > 0):
            observation = Observation.INVALID
        elif min_prompt_tokens > most:
            observation = Observation.OUT_OF_BOUNDS  # more tokens than the bytes can hold: not a real floor
        else:
            observation = Observation.ACCEPTED
            self.memory.remember(shape, min_prompt_tokens, False, est)
        return Learned(category, observation, est, _error_pct(observation, est, min_prompt_tokens))

    def _attributed(
        self, shape: RequestShape, prompt_tokens: int, routed: Estimate | None
    ) -> tuple[str, int, float, int]:
        """(category, bytes, tokens) the observation teaches, and the prompt estimate made for it."""
        means = lambda c: self.calibrator.state(c).mean  # noqa: E731 - tiny adapter
        category, nbytes, tokens = attribute(shape, prompt_tokens, means, self.budget)
        est = routed.prompt_tokens if routed is not None else self.estimate(shape).prompt_tokens
        return category, nbytes, tokens, est


def _share(total: int | None, b_short: int) -> float | None:
    return None if total is None or b_short <= 0 else total / b_short


def _error_pct(observation: Observation, estimated: int, prompt_tokens: int) -> float | None:
    """Signed (estimate - actual) / actual in %; None when the observation says nothing about the
    estimate (zero tokens, or a ratio no tokenizer produces)."""
    if observation in (Observation.INVALID, Observation.OUT_OF_BOUNDS) or prompt_tokens <= 0:
        return None
    return (estimated - prompt_tokens) / prompt_tokens * 100.0
