"""Tokenizer and chat-template overhead of the model families a pool may serve, chosen by model name.

A pool serving Llama-3 counts with Llama-3's vocabulary and template, a Qwen3 pool with Qwen's, so the
whole stack can be measured per model. The template figures are the fixed tokens each template adds:
- Llama-3: ``<|start_header_id|>ROLE<|end_header_id|>\\n\\n ... <|eot_id|>`` is 4 per message plus the
  role's own tokens; ``<|begin_of_text|>`` + the assistant header is 5 per request; completions get BOS.
- Qwen3 (ChatML): ``<|im_start|>ROLE\\n ... <|im_end|>\\n`` is 4 per message plus the role;
  ``<|im_start|>assistant\\n`` is 3 per request; no BOS.
- OpenAI chat models: 3 per message and 3 to prime the reply (the figures OpenAI documents), no BOS.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelProfile:
    encoding: str
    tokens_per_message: int
    tokens_per_request: int
    bos_tokens: int


PROFILES: dict[str, ModelProfile] = {
    "llama3": ModelProfile("llama3", 4, 5, 1),
    "qwen3": ModelProfile("qwen3", 4, 3, 0),
    "gpt-4o": ModelProfile("o200k_base", 3, 3, 0),
    "gpt-4": ModelProfile("cl100k_base", 3, 3, 0),
}
# Model-name patterns (lowercased, any "org/" prefix dropped), first match wins.
MODEL_PATTERNS: tuple[tuple[str, str], ...] = (
    ("*llama*", "llama3"),
    ("qwen*", "qwen3"),
    ("qwq*", "qwen3"),
    ("gpt-4o*", "gpt-4o"),
    ("gpt-4.1*", "gpt-4o"),
    ("gpt-5*", "gpt-4o"),
    ("o[134]*", "gpt-4o"),
    ("gpt-4*", "gpt-4"),
    ("gpt-3.5*", "gpt-4"),
)
NONE, AUTO = "none", "auto"  # model_profile values besides the names of PROFILES
PROFILE_CHOICES = (NONE, AUTO, *PROFILES)


def profile_for_model(model: str) -> ModelProfile | None:
    """The profile whose pattern matches the served model's name, or None for an unknown family."""
    name = model.lower().rsplit("/", 1)[-1]
    for pattern, profile in MODEL_PATTERNS:
        if fnmatch.fnmatchcase(name, pattern):
            return PROFILES[profile]
    return None


def resolve_profile(choice: str, model: str) -> ModelProfile | None:
    """What ``model_profile`` selects: None keeps the explicit encoding and template settings."""
    if choice == NONE:
        return None
    if choice == AUTO:
        found = profile_for_model(model)
        if found is None:
            families = ", ".join(p for p, _ in MODEL_PATTERNS)
            raise ValueError(f"model_profile auto: no profile matches model {model!r} (patterns: {families})")
        return found
    if choice not in PROFILES:
        raise ValueError(f"model_profile must be one of {', '.join(PROFILE_CHOICES)}, got {choice!r}")
    return PROFILES[choice]
