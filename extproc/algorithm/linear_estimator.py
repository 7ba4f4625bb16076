"""Estimator v2: a linear token model per (served model x category), learned online from ``usage``.

    prompt_tokens ≈ w · x,   x = (character-class counts of the text and the tool JSON,
                                  structured bytes, messages, tool items, 1)

One bytes/token ratio per category misjudges text of the same category by ±15-20 % (HTML against
prose, shell against Python, Chinese against Japanese); a linear model over cheap class counts
(``features``) halves that error, and fitting the chat-template framing (per message, per tool, per
request) in the same regression means tiny prompts teach framing instead of dragging the text
weights, and a request that mixes text and tool JSON teaches both instead of being skipped. The tool
JSON is class-counted like text (its quotes, keys and digits are what set its tokens); the structured
bytes stay a regressor of their own, the correction JSON needs against text of the same classes.

Fit: exponentially weighted least squares (recursive least squares with forgetting λ =
``fit_forgetting``, 0.995: 17 weights need a memory of ~200 samples where one ratio needs the paper's
β = 0.95) with a ridge that pulls every weight towards the prior (the v1 cold-start ratio and the
configured framing). The ridge never decays, so directions the traffic does not excite stay at the
prior instead of winding up, and a few samples only nudge the model. The normal equations are 17 x 17:
solving them at learn time in pure Python (the core install has no numpy) costs 0.3-0.6 ms, so
converged buckets re-solve on every 4th sample; the hot path is one dot product.

Safety margin: the relative error of every prediction made *before* its sample was learned (an
out-of-sample residual) feeds an exponentially weighted mean and variance; routing uses
``ŷ·(1 + μ + z·σ)`` with ``z`` the normal quantile of the target under-estimate probability, inflated
while samples are few. After a shift in traffic the residuals grow and the margin widens by itself
within a few samples (the same forgetting).

Defences (as in v1): until ``calibration.min_samples`` a bucket may only be more conservative than its prior;
samples whose bytes/token lies outside ``[min_ratio, max_ratio]`` are rejected, so are far outliers
once warmed up; every estimate is clamped to the bytes/token bounds, so a backend lying in ``usage``
cannot move routing outside them. Buckets are keyed by the request's ``model``, and only traffic a
pool really served shapes them: a model gets its own slot when a pool's ``usage`` for it is learned
(until then, and for names that are not model names, it reads the shared bucket), at most
``max_models`` slots, the least recently used given up for a new one. A client sending bogus names
(which every pool answers 404) can neither take slots nor get them persisted.
"""

from __future__ import annotations

import bisect
import math
import operator
import re
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

from extproc.algorithm.budget import BudgetParams
from extproc.algorithm.calibration import CalibrationParams, Observation
from extproc.algorithm.features import BYTES, DEFAULT_SAMPLE_BYTES, N_TEXT, TEXT_FEATURES
from extproc.algorithm.linalg import decay_add_outer, solve_spd

RECENT_ERRORS = 128  # out-of-sample relative errors kept per bucket for the empirical margin
SOLVE_EVERY = 4  # once a bucket converged, re-solve the fit on every 4th sample only
EMPIRICAL_SAMPLES = 32  # from this many (effective, weighted) recent errors on, they alone set the margin
# Trusted counts far off the fit among the last RECENT_ERRORS learns before their errors price the
# margin: one is a text unlike the bucket (remembered for its prompt), several agree that it is wrong.
AGREEMENT = 3
RECENCY = 0.99  # per-sample decay of a recent error's weight in the routing margin (half-life ~70 samples)
SHARE_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 2.0)  # ŷ / B_short
FAR_WEIGHT = 0.05  # the weight in the routing margin of an error far from the threshold (see ``closeness``)
DEFAULT_MODEL = "*"  # bucket for requests without a model (or its own slot), and for names that are not model names
MAX_MODEL_NAME = 128  # longer "model" strings are not names a pool serves
# What served-model names look like (Hugging Face ids, aliases, LoRA names, ``org/model:tag@rev``).
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+=-]*")
FEATURES = (*TEXT_FEATURES, "structured_bytes", "messages", "tools", "request")
STRUCTURED, MESSAGES, TOOLS, REQUEST = range(N_TEXT, N_TEXT + 4)
N_FEATURES = len(FEATURES)
ESTIMATOR_KINDS = ("linear", "ratio")
# Features are scaled so a typical few-KB prompt has values near 1: the ridge then means the same
# for every weight, and the normal equations stay well conditioned.
_BYTE_SCALE = 1.0 / 1024.0


@dataclass(frozen=True, slots=True)
class EstimatorParams:
    kind: str = "linear"  # "linear" (v2) or "ratio" (the paper's EMA ratio, v1: the comparison baseline)
    forgetting: float = 0.95  # λ of the error statistics (hence the margin): the paper's β
    fit_forgetting: float = 0.995  # λ of the 17-weight fit: ~10x the samples one ratio needs (a 200-sample memory)
    underestimate_prob: float = 0.003  # target share of near-boundary requests routed short that do not fit
    boundary_window: float = 0.2  # "near the boundary": true total within ±20 % of B_short
    max_models: int = 8
    prior_weight: float = 0.5  # ridge towards the prior, in units of one typical (scaled) sample
    sample_bytes: int = DEFAULT_SAMPLE_BYTES
    margin_min_tokens: int = 256  # smaller prompts teach the fit but not the margin (relative noise)
    cold_margin: float = 0.25  # margin while the error statistics have fewer than ``calibration.min_samples``
    band_prob: float = 0.001  # per-request probability of a prompt beyond the uncertainty band (exact band)
    prompt_memory: int = 4096  # prompts whose engine count or floor is remembered (``PromptMemory``)


@dataclass(frozen=True, slots=True)
class LinearEstimate:
    point: float  # ŷ: the model's prompt tokens, no margin
    routed: int  # ceil(ŷ·(1 + margin)), clamped to the bytes/token bounds: what routing uses
    low: float  # the uncertainty band, ŷ·(1 − lower) .. ŷ·(1 + upper): where an exact count pays
    high: float
    margin: float


class Bucket:
    """Fit and error statistics of one (model, category)."""

    __slots__ = (
        "a",
        "b",
        "closeness",
        "descending",
        "err_mean",
        "err_samples",
        "err_var",
        "grid",
        "margin",
        "prior",
        "recent",
        "ridge",
        "samples",
        "surprises",
        "weighted",
        "weights",
    )

    def __init__(self, prior: Sequence[float], ridge: float) -> None:
        self.prior = tuple(float(v) for v in prior)
        self.ridge = ridge
        self.a = [0.0] * (N_FEATURES * N_FEATURES)  # Σ λ^age x xᵀ, row-major
        self.b = [0.0] * N_FEATURES  # Σ λ^age x y
        self.weights: tuple[float, ...] = tuple(float(v) for v in prior)
        self.samples = 0
        self.err_mean = 0.0
        self.err_var = 0.0
        self.err_samples = 0
        self.margin: tuple[float, float, float] | None = None  # cached margins; reset when errors are learned
        self.recent: deque[float] = deque(maxlen=RECENT_ERRORS)
        self.closeness: deque[float] = deque(maxlen=RECENT_ERRORS)  # each recent error's ``closeness``
        self.surprises: deque[bool] = deque(maxlen=RECENT_ERRORS)  # per learn: a trusted count far off the fit
        # routing margins at SHARE_GRID, each solved when first asked for (a learn resets them: one
        # solve per decision instead of 13), and the recent errors with their weights, largest first
        self.grid: list[float | None] | None = None
        self.descending: list[tuple[float, float]] = []
        self.weighted: tuple[float, float, float] = (0.0, 0.0, 0.0)  # weighted mean, sd, effective samples

    def predict(self, x: Sequence[float]) -> float:
        return float(sum(map(operator.mul, self.weights, x)))

    def update(self, x: Sequence[float], y: float, lam: float, solve: bool = True, weight: float = 1.0) -> None:
        """Add one sample (``weight`` < 1: bounded influence); re-solve ``(A + ρI) w = b + ρ·prior``
        when ``solve`` (the caller thins solves out once a bucket has converged: each costs ~0.1 ms of
        pure Python)."""
        if weight != 1.0:
            root = math.sqrt(weight)
            x, y = [v * root for v in x], y * root
        decay_add_outer(self.a, self.b, x, y, lam)
        self.samples += 1
        if not solve:
            return
        a = list(self.a)
        for i in range(N_FEATURES):
            a[i * N_FEATURES + i] += self.ridge
        w = solve_spd(a, [bi + self.ridge * pi for bi, pi in zip(self.b, self.prior, strict=True)])
        if w is not None:
            self.weights = tuple(w)

    def observe_error(self, rel: float, lam: float, closeness: float = 1.0) -> None:
        self.err_mean, self.err_var = ew_moments(self.err_mean, self.err_var, self.err_samples, rel, lam)
        self.err_samples += 1
        self.recent.append(rel)
        self.closeness.append(closeness)
        self.margin = self.grid = None

    def weighted_errors(self) -> None:
        """Sort the recent errors with their routing weights (closeness to the threshold times recency)
        and take their weighted moments; cached with the grid until the next learn."""
        n = len(self.recent)
        pairs = [
            (e, k * RECENCY ** (n - 1 - i)) for i, (e, k) in enumerate(zip(self.recent, self.closeness, strict=True))
        ]
        total = sum(w for _, w in pairs)
        if total <= 0.0:
            self.descending, self.weighted = [], (0.0, 0.0, 0.0)
            return
        mean = sum(e * w for e, w in pairs) / total
        var = sum(w * (e - mean) ** 2 for e, w in pairs) / total
        effective = total * total / sum(w * w for _, w in pairs)
        self.descending = sorted(pairs, reverse=True)
        self.weighted = (mean, math.sqrt(var), effective)


class LinearEstimator:
    """Buckets keyed by (model, category); see the module docstring."""

    def __init__(
        self,
        params: EstimatorParams | None = None,
        calibration: CalibrationParams | None = None,
        budget: BudgetParams | None = None,
    ) -> None:
        self.params = params or EstimatorParams()
        self.calibration = calibration or CalibrationParams()
        self.budget = budget or BudgetParams()
        self._priors = dict(self.calibration.priors)
        self._buckets: dict[tuple[str, str], Bucket] = {}
        self._models: OrderedDict[str, None] = OrderedDict()  # models with their own slot, least recent first
        self.reclaimed = 0  # slots given up (least recently used) for a newer model
        p = self.params
        # band half-width in σ: the Laplace quantile (heavier tails than normal; real errors have them)
        self.z = max(NormalDist().inv_cdf(1.0 - p.band_prob), math.log(0.5 / p.band_prob) / math.sqrt(2.0))
        self._lam = p.forgetting
        self._fit_lam = p.fit_forgetting

    # -- buckets -------------------------------------------------------------------------------------
    def model_key(self, model: str | None) -> str:
        """The slot a request's model reads: its own once a pool's usage gave it one, else the shared
        bucket. Reading counts as use (the least recently used slot is the one reclaimed)."""
        if model and model in self._models:
            self._models.move_to_end(model)
            return model
        return DEFAULT_MODEL

    def claim(self, model: str | None) -> str:
        """The slot to learn a pool's usage for ``model`` in: its own, made now if needed (reclaiming
        the least recently used slot when all ``max_models`` are taken). A name that is not a model
        name (too long, control characters, spaces) learns in the shared bucket."""
        if not model or len(model) > MAX_MODEL_NAME or not _MODEL_NAME.fullmatch(model):
            return DEFAULT_MODEL
        if model in self._models:
            self._models.move_to_end(model)
            return model
        if len(self._models) >= self.params.max_models:
            old, _ = self._models.popitem(last=False)
            for key in [k for k in self._buckets if k[0] == old]:
                del self._buckets[key]
            self.reclaimed += 1
        self._models[model] = None
        return model

    def models(self) -> list[str]:
        """The models with their own slot, least recently used first."""
        return list(self._models)

    def prior_ratio(self, category: str) -> float:
        return self._priors.get(category, self.calibration.cold_start)

    def prior_weights(self, category: str) -> list[float]:
        """Scaled weights equivalent to v1's cold start: text at the prior ratio, framing as configured.
        The bytes feature counts the tool JSON too, so the structured weight is the difference between
        the structured prior and the category's."""
        b = self.budget
        w = [0.0] * N_FEATURES
        w[BYTES] = 1.0 / self.prior_ratio(category) / _BYTE_SCALE
        w[STRUCTURED] = 1.0 / self.prior_ratio(b.structured_category) / _BYTE_SCALE - w[BYTES]
        w[MESSAGES] = b.framing_per_message
        w[TOOLS] = b.framing_per_tool
        w[REQUEST] = b.framing_per_request
        return w

    def bucket(self, model: str | None, category: str, learning: bool = False) -> Bucket:
        """The bucket a request reads (``learning``: the one a pool's usage teaches, see ``claim``)."""
        key = (self.claim(model) if learning else self.model_key(model), category)
        found = self._buckets.get(key)
        if found is None:
            found = self._buckets[key] = Bucket(self.prior_weights(category), self.params.prior_weight)
        return found

    def buckets(self) -> dict[tuple[str, str], Bucket]:
        return dict(self._buckets)

    # -- estimate ------------------------------------------------------------------------------------
    @staticmethod
    def vector(text: Sequence[float], structured_bytes: float, messages: int, tools: int) -> list[float]:
        """The scaled feature vector; ``messages`` is 0 for completions (no chat template)."""
        if len(text) != N_TEXT:
            raise ValueError(f"expected {N_TEXT} text features ({', '.join(TEXT_FEATURES)}), got {len(text)}")
        x = [v * _BYTE_SCALE for v in text]
        x += [structured_bytes * _BYTE_SCALE, float(messages), float(tools), 1.0 if messages else 0.0]
        return x

    def margins(self, bucket: Bucket) -> tuple[float, float, float]:
        """(sigma, upper, lower) relative error statistics of the bucket, cached until it learns.

        ``sigma``: the spread of the relative error, inflated while samples are few (``routing_margin``
        prices it). ``upper``/``lower``: the per-request ``band_prob`` quantiles of a Laplace error
        with that mean and spread, or the largest recent errors if wider: the uncertainty band that
        the exact count covers. The cold margin stands in while the error statistics are young.
        """
        if bucket.margin is None:
            bucket.margin = self._margins(bucket)
        return bucket.margin

    def _margins(self, bucket: Bucket) -> tuple[float, float, float]:
        p = self.params
        n = bucket.err_samples
        if n < self.calibration.min_samples:
            return p.cold_margin, p.cold_margin, p.cold_margin
        sigma = math.sqrt(bucket.err_var) * (1.0 + 1.0 / math.sqrt(n))
        # the band also covers the extremes of the recent errors: tails heavier than normal
        high, low = (max(bucket.recent), min(bucket.recent)) if bucket.recent else (0.0, 0.0)
        upper = max(0.0, bucket.err_mean + self.z * sigma, high)
        return sigma, upper, max(0.0, self.z * sigma - bucket.err_mean, -low)

    def routing_margin(self, bucket: Bucket, share: float) -> float:
        """Relative margin for a prompt of ``share`` = ŷ / B_short.

        A request whose true total is spread over B_short·(1 ± w) routes short although it does not
        fit when its prompt is under-estimated by more than the margin plus its distance to B_short;
        over that window the share of such routes is E[(e − m)+]·share / 2w. The margin is the
        smallest m that keeps it at the target ``p``: prompts that are a small part of B_short need
        less margin than prompts that fill it.

        The errors that price it are the bucket's recent ones, each weighted by how close its request's
        true total was to B_short (``closeness``) and by recency: what the router mis-sizes *near the
        threshold* is what routing pays for, and it differs from what it mis-sizes elsewhere (small
        prompts have larger relative errors; other texts come at other sizes). Far errors keep a small
        weight, so a bucket that has seen no near-threshold request still has a margin.
        """
        sigma, upper, _ = self.margins(bucket)
        if bucket.err_samples < self.calibration.min_samples or sigma <= 0.0:
            return upper
        i = min(bisect.bisect_left(SHARE_GRID, share), len(SHARE_GRID) - 1)  # next larger share: safer
        if bucket.grid is None:
            bucket.grid = [None] * len(SHARE_GRID)
            bucket.weighted_errors()
        found = bucket.grid[i]
        if found is None:
            found = bucket.grid[i] = self._routing_margin(bucket, SHARE_GRID[i])
        return found

    def _routing_margin(self, bucket: Bucket, share: float) -> float:
        """The margin at one grid share: on the weighted errors themselves (tails heavier than normal,
        a language the features do not see, stay priced), and while they are few (effective samples
        under ``EMPIRICAL_SAMPLES``) at least the Gaussian one of their weighted moments, its spread
        inflated by 1 + 1/√n."""
        budget = self.params.underestimate_prob * 2.0 * self.params.boundary_window / share
        mean, sd, effective = bucket.weighted
        if not bucket.descending:
            return 0.0
        empirical = _empirical_excess_quantile(bucket.descending, budget)
        if effective >= EMPIRICAL_SAMPLES:
            return max(0.0, empirical)
        sigma = sd * (1.0 + 1.0 / math.sqrt(max(effective, 1.0)))
        gaussian = mean + _excess_quantile(budget / sigma) * sigma if sigma > 0.0 else mean
        return max(0.0, gaussian, empirical)

    def bounds(self, nbytes: float, x: Sequence[float]) -> tuple[float, float]:
        """Token range the bytes/token bounds allow: no learned state can route outside it."""
        c = self.calibration
        framing = x[MESSAGES] * self.budget.framing_per_message + x[TOOLS] * self.budget.framing_per_tool
        framing += x[REQUEST] * self.budget.framing_per_request
        return nbytes / c.max_ratio + framing, nbytes / c.min_ratio + framing

    def estimate(self, model: str | None, category: str, x: Sequence[float], b_short: int = 8192) -> LinearEstimate:
        bucket = self.bucket(model, category)
        point = bucket.predict(x)
        _, up, down = self.margins(bucket)
        margin = self.routing_margin(bucket, point / b_short)
        nbytes = x[BYTES] / _BYTE_SCALE  # text and tool JSON
        lo, hi = self.bounds(nbytes, x)
        routed = point * (1.0 + margin)
        if bucket.samples < self.calibration.min_samples:  # only more conservative than the prior until warm
            routed = max(routed, sum(map(operator.mul, bucket.prior, x)))
        routed = min(max(routed, lo), hi)
        low = min(max(point * (1.0 - down), lo), routed)
        high = max(min(point * (1.0 + up), hi), routed)
        return LinearEstimate(point, math.ceil(routed), low, high, margin)

    # -- learn ---------------------------------------------------------------------------------------
    def observe(
        self,
        model: str | None,
        category: str,
        x: Sequence[float],
        tokens: float,
        trusted: bool = False,
        total_share: float | None = None,
    ) -> Observation:
        """Learn one request's prompt tokens (images already subtracted).

        ``trusted``: the engine's count of a request the estimate misplaced (``Outcome.trusted``). Far
        from the fit it is not rejected: the fit does not describe that text. It is learned with
        bounded influence instead (its weight in the fit and its error in the margin are cut to the
        outlier bound), and its error prices the margin only once ``AGREEMENT`` such counts came
        among the bucket's recent learns: one such prompt cannot move its bucket far (its own count is
        remembered for it by the router), many that agree do.
        ``total_share``: the request's true total (prompt + output limit) over ``B_short``, which
        weights its error in the routing margin by closeness to the threshold; None: unknown."""
        c = self.calibration
        nbytes = x[BYTES] / _BYTE_SCALE
        if not (tokens > 0 and nbytes > 0):
            return Observation.INVALID
        lo, hi = self.bounds(nbytes, x)
        if not lo <= tokens <= hi:
            return Observation.OUT_OF_BOUNDS
        bucket = self.bucket(model, category, learning=True)
        point = bucket.predict(x)
        rel = (tokens - point) / point if point > 0 else 0.0
        warm = bucket.samples >= self.calibration.min_samples
        limit = max(c.outlier_factor, 4.0 * math.sqrt(bucket.err_var) + abs(bucket.err_mean))
        weight = 1.0
        surprise = warm and abs(rel) > limit
        if surprise:
            if not trusted:
                return Observation.OUTLIER
            weight = limit / abs(rel)
            rel = math.copysign(limit, rel)
        bucket.surprises.append(surprise)
        agreed = not surprise or sum(bucket.surprises) >= AGREEMENT
        if warm and point >= self.params.margin_min_tokens and agreed:
            bucket.observe_error(rel, self._lam, closeness(total_share, self.params.boundary_window))
        thin = bucket.samples >= self.calibration.converged_samples and bucket.samples % SOLVE_EVERY
        bucket.update(x, tokens, self._fit_lam, solve=not thin, weight=weight)
        return Observation.ACCEPTED

    def converged(self, model: str | None, category: str) -> bool:
        return self.bucket(model, category).samples >= self.calibration.converged_samples

    # -- state ---------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, dict[str, Any]]:
        """JSON-ready state: per bucket the weights, error statistics and the fit's sufficient statistics.
        Only buckets that learned something: nothing a client sent without a pool's answer is kept."""
        return {
            f"{model}\t{category}": {
                "features": list(FEATURES),
                "weights": list(b.weights),
                "samples": b.samples,
                "err_mean": b.err_mean,
                "err_var": b.err_var,
                "err_samples": b.err_samples,
                "recent": list(b.recent),
                "closeness": list(b.closeness),
                "a": list(b.a),
                "b": list(b.b),
            }
            for (model, category), b in self._buckets.items()
            if b.samples > 0
        }

    def load(self, data: Mapping[str, Any]) -> int:
        """Restore a snapshot; malformed entries, and those of another feature layout (an older
        release), are ignored: that bucket starts again from its prior. Returns how many buckets were
        restored. Whatever weights a file holds, estimates stay clamped to the bytes/token bounds."""
        restored = 0
        for key, entry in data.items():
            try:
                model, category = str(key).split("\t", 1)
                weights = [float(v) for v in entry["weights"]]
                a = [float(v) for v in entry["a"]]
                b = [float(v) for v in entry["b"]]
                samples, err_samples = int(entry["samples"]), int(entry["err_samples"])
                err_mean, err_var = float(entry["err_mean"]), float(entry["err_var"])
                recent = [float(v) for v in entry.get("recent", ())]
                kept = [float(v) for v in entry.get("closeness", ())]
                layout = entry.get("features")
            except (KeyError, TypeError, ValueError, AttributeError):
                continue
            if layout != list(FEATURES):
                continue
            if len(weights) != N_FEATURES or len(b) != N_FEATURES or len(a) != N_FEATURES * N_FEATURES:
                continue
            if samples < 0 or err_samples < 0 or not err_var >= 0.0:
                continue
            if not all(math.isfinite(v) for v in (*weights, *a, *b)):
                continue
            if not math.isfinite(err_mean) or not all(math.isfinite(v) for v in recent):
                continue
            if samples == 0 or (model != DEFAULT_MODEL and self.claim(model) != model):
                continue  # nothing learned, or a name no pool serves (an older release kept those)
            bucket = self.bucket(model, category)
            bucket.weights = tuple(weights)
            bucket.a, bucket.b, bucket.samples = a, b, samples
            bucket.err_mean, bucket.err_var, bucket.err_samples = err_mean, err_var, err_samples
            bucket.recent.extend(recent[-RECENT_ERRORS:])
            kept = kept[-RECENT_ERRORS:]
            if len(kept) != len(bucket.recent) or not all(0.0 <= v <= 1.0 for v in kept):
                kept = [FAR_WEIGHT] * len(bucket.recent)  # an older file: every error counts as far
            bucket.closeness.extend(kept)
            bucket.grid = None
            bucket.margin = None
            restored += 1
        return restored


def closeness(total_share: float | None, window: float) -> float:
    """How much a sample's error says about routing near the threshold: 1 for a true total at
    ``B_short``, falling as a Gaussian of width ``window`` (the near-boundary window), never below
    ``FAR_WEIGHT`` (so a young bucket's margin still rests on every sample it has)."""
    if total_share is None:
        return FAR_WEIGHT
    d = (total_share - 1.0) / window
    return max(FAR_WEIGHT, math.exp(-0.5 * d * d))


def ew_moments(mean: float, var: float, n: int, value: float, lam: float) -> tuple[float, float]:
    """Exponentially weighted mean and variance after one more value; plain averages for the first
    ``1/(1 − λ)`` values (as v1's ratio), so a young estimate is not dominated by its first value."""
    w = max(1.0 - lam, 1.0 / (n + 1))
    delta = value - mean
    return mean + w * delta, (1.0 - w) * (var + w * delta * delta)


_STD_NORMAL = NormalDist()


def _empirical_excess_quantile(descending: Sequence[tuple[float, float]], target: float) -> float:
    """The m with Σ w·(e − m)+ = target·Σ w over the weighted residuals (sorted largest first)."""
    total = math.fsum(w for _, w in descending)
    goal = target * total
    top = weight = 0.0
    n = len(descending)
    for j, (e, w) in enumerate(descending):
        top += e * w
        weight += w
        if weight <= 0.0:
            continue
        m = (top - goal) / weight
        nxt = descending[j + 1][0] if j + 1 < n else -math.inf
        if nxt <= m <= e:
            return m
    return descending[0][0] - goal / max(descending[0][1], 1e-12)  # unreachable for a positive target


def _excess(k: float) -> float:
    """E[(Z − k)+] for a standard normal Z."""
    return _STD_NORMAL.pdf(k) - k * (1.0 - _STD_NORMAL.cdf(k))


def _solve_excess(target: float) -> float:
    """The k with E[(Z − k)+] = target (bisection; the function falls monotonically in k)."""
    lo, hi = -4.0, 8.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if _excess(mid) > target:
            lo = mid
        else:
            hi = mid
    return hi


# k for targets 10^-8 .. 10^1 on a log grid: the hot path interpolates instead of bisecting (~1 µs).
_GRID_LOG10 = [-8.0 + i * 0.05 for i in range(181)]
_GRID_K = [_solve_excess(10.0**g) for g in _GRID_LOG10]


def _excess_quantile(target: float) -> float:
    """k with E[(Z − k)+] = target, interpolated on the grid; rounded towards the larger (safer) k."""
    if target <= 1e-8:
        return _GRID_K[0]
    pos = (math.log10(target) + 8.0) / 0.05
    if pos >= len(_GRID_K) - 1:
        return _GRID_K[-1]
    return _GRID_K[int(pos)]  # the grid point at the smaller target: the larger k
