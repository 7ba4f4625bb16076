"""Total token budget of a request, and the inverse: attributing observed prompt tokens to text.

    L_total = ceil(text_bytes / c*_k) + ceil(structured_bytes / c*_structured)
              + images·image_tokens + framing + output_reserve

Framing (chat-template tokens) is modelled explicitly so that short prompts, where a fixed
template overhead is a large share of ``prompt_tokens``, do not drag the learned ratio down.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from extproc.algorithm.endpoints import default_max_tokens, templated
from extproc.algorithm.request_shape import RequestShape

Ratios = Callable[[str], float]

# Prompt tokens of one image part: the one default the router's budget and the emulator share.
# A fixed cost must bound what the engine spends on the largest image, or an image can make a
# request overflow the short context. The served family is Llama; its vision models in vLLM are
# Llama 4's, whose processor cuts an image into at most 16 tiles of 336 px plus a global tile, each
# 144 tokens after pixel shuffle, with one separator per tile and start/image/end markers:
# 16 * (144 + 1) + 144 + 3 = 2467 tokens for the largest image (a small one costs 147). Fixed-size
# encoders cost less (LLaVA-1.5: 576); dynamic ones more (Qwen2-VL up to max_pixels / 784):
# operators set ``routing.image_tokens`` for the model they serve.
IMAGE_TOKENS = 16 * (144 + 1) + 144 + 3


@dataclass(frozen=True, slots=True)
class BudgetParams:
    default_output_tokens: int = 1024
    framing_per_request: int = 3
    framing_per_message: int = 4
    framing_per_tool: int = 8
    image_tokens: int = IMAGE_TOKENS
    structured_category: str = "structured"


@dataclass(frozen=True, slots=True)
class Estimate:
    prompt_tokens: int
    output_tokens: int
    total: int
    ratio: float  # c* applied to the text bytes
    output_defaulted: bool
    # v2 (linear estimator) only: the feature vector, to learn from without counting again, and the
    # exact token count when the exact band fired.
    features: tuple[float, ...] | None = None
    counted: int | None = None
    # The v2 uncertainty band holds B_short and nothing counted the prompt: an exact count would pay.
    in_band: bool = False
    # The engine's own count of the prompt (vLLM's /tokenize), when the router asked for it.
    engine_counted: int | None = None


def framing_tokens(shape: RequestShape, p: BudgetParams) -> int:
    """Chat-template tokens of an API rendered through the template (chat, Responses)."""
    if not templated(shape.endpoint):
        return 0
    return p.framing_per_request + p.framing_per_message * shape.messages + p.framing_per_tool * shape.tool_items


def estimate(shape: RequestShape, ratios: Ratios, p: BudgetParams) -> Estimate:
    ratio = ratios(shape.category)
    if shape.known_prompt_tokens is not None:
        prompt = shape.known_prompt_tokens
    else:
        prompt = math.ceil(shape.text_bytes / ratio) + framing_tokens(shape, p) + shape.images * p.image_tokens
        if shape.structured_bytes:
            prompt += math.ceil(shape.structured_bytes / ratios(p.structured_category))
    limit = output_limit(shape)
    defaulted = limit is None
    out = p.default_output_tokens if limit is None else limit
    return Estimate(prompt, out, prompt + out, ratio, defaulted)


def output_limit(shape: RequestShape) -> int | None:
    """The most output tokens each sequence of the request may get, as vLLM computes it: the
    request's own limit, else its API's default (16 for /v1/completions); None where the answer may
    run to the end of the context."""
    return shape.output_tokens if shape.output_tokens is not None else default_max_tokens(shape.endpoint)


def attribute(shape: RequestShape, prompt_tokens: int, means: Ratios, p: BudgetParams) -> tuple[str, int, float]:
    """Which category an observed ``prompt_tokens`` teaches, with its bytes and tokens.

    The tokens left after framing and images belong to text and structured bytes together. When one
    kind holds at least 90 % of the bytes, the minor kind's tokens are subtracted at its current mean
    ratio and the rest teaches the major kind; a true 50/50 mix teaches nothing reliable, so the
    caller gets zero tokens and the observation is rejected as invalid.
    """
    residual = float(prompt_tokens - framing_tokens(shape, p) - shape.images * p.image_tokens)
    text = shape.text_bytes if shape.learn_text_bytes is None else shape.learn_text_bytes
    structured = shape.structured_bytes
    total = text + structured
    if total == 0 or shape.known_prompt_tokens is not None:
        return shape.category, 0, 0.0
    if structured <= 0.1 * total:
        tokens = residual - (structured / means(p.structured_category) if structured else 0.0)
        return shape.category, text, tokens
    if text <= 0.1 * total:
        tokens = residual - (text / means(shape.category) if text else 0.0)
        return p.structured_category, structured, tokens
    return shape.category, text, 0.0
