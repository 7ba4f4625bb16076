"""``POST /tokenize`` as vLLM serves it: what a prompt costs before it is sent.

A router or client asks it for the engine's own count of a chat (``messages``, with or without the
generation prompt) or a completion ``prompt``; the answer is ``{"count", "max_model_len", "tokens",
"token_strs"}``. The count is exactly the ``usage.prompt_tokens`` the same request would report. The
ids of text are the vocabulary's own; the tokens a chat template or a media part adds are counted,
not rendered, so they appear as ``TEMPLATE_TOKEN_ID`` placeholders.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from extproc.emulator.engine_args import EmulatorConfig
from extproc.emulator.errors import ApiError
from extproc.emulator.protocol import PromptCounter, check_model, lax_bool
from extproc.emulator.tokens import TokenCounter

TEMPLATE_TOKEN_ID = 0


class PromptTokens(PromptCounter):
    """The walk of ``PromptCounter``, collecting the ids it counts."""

    def __init__(self, cfg: EmulatorConfig, counter: TokenCounter) -> None:
        super().__init__(cfg, counter)
        self.ids: list[int] = []

    def _text(self, text: str) -> int:
        self._chars += len(text)
        ids = self.bpe.encode(text)
        self.ids.extend(ids)
        return len(ids)

    def _fixed(self, tokens: int) -> int:
        self.ids.extend([TEMPLATE_TOKEN_ID] * tokens)
        return tokens

    def chat_ids(self, body: Mapping[str, Any], generation_prompt: bool, extra_bos: bool) -> list[int]:
        self.chat(body, generation_prompt=generation_prompt)
        if extra_bos:  # add_special_tokens: BOS on top of the template's own
            self._fixed(self.cfg.bos_tokens)
        return self.ids

    def prompt_ids(self, text: str, bos: bool) -> list[int]:
        self._fixed(self.cfg.bos_tokens if bos else 0)
        self._text(text)
        return self.ids


def tokenize(body: Mapping[str, Any], cfg: EmulatorConfig, counter: TokenCounter) -> bytes:
    """The ``/tokenize`` answer for a chat (``messages``) or completion (``prompt``) body, with vLLM's
    defaults: the generation prompt on and no extra BOS for chats, BOS for prompts."""
    check_model(cfg, body)
    walk = PromptTokens(cfg, counter)
    if "messages" in body:
        generation_prompt = lax_bool(body, "add_generation_prompt") is not False
        ids = walk.chat_ids(body, generation_prompt, extra_bos=bool(lax_bool(body, "add_special_tokens")))
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise ApiError(400, "Input should be a valid string (body.prompt)", param="prompt")
        ids = walk.prompt_ids(prompt, bos=lax_bool(body, "add_special_tokens") is not False)
    return orjson.dumps({"count": len(ids), "max_model_len": cfg.max_model_len, "tokens": ids, "token_strs": None})
