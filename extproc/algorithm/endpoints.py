"""The OpenAI APIs the router understands, one descriptor each, registered by path.

Everything that differs between chat, completions and Responses requests lives here: how the path
looks, which field limits the output, whether the prompt goes through the chat template (and so
costs framing tokens per message and tool), how a stream carries usage, and the OpenTelemetry
operation name. The request shape, both estimators, the exchange, usage/SSE parsing and telemetry
read these fields instead of testing endpoint names, so adding an API is one entry here plus its
body parser in ``request_shape``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str  # metric label and access-log value
    path_suffix: str  # matched against the request path without its query, any prefix (``/v1``, a gateway's)
    # The output limit in vLLM's precedence: the first one set wins.
    output_limit_keys: tuple[str, ...]
    # Rendered through the chat template: the prompt costs framing tokens per request, message and
    # tool item on top of its text (vLLM's Responses API renders its input like a chat request).
    templated: bool
    # A stream carries usage only when the client asks (``stream_options.include_usage``); the
    # Responses API always closes with ``response.completed``, usage included.
    usage_on_request: bool
    operation: str  # gen_ai.operation.name (a Responses call is a chat operation)
    # The output limit vLLM applies when the request sets none: None lets the answer run to the end of
    # the context (chat, Responses); /v1/completions stops at 16 tokens (vLLM's and OpenAI's default).
    default_max_tokens: int | None = None
    # The field asking for several completions of one prompt (each a sequence of its own, each
    # allowed the full output limit), or "" when the API has none.
    choices_key: str = ""
    # vLLM's POST /tokenize takes this API's prompt (chat messages, or a completion prompt) and
    # renders it as the endpoint would; it has no form for a Responses input.
    tokenize: bool = False


CHAT = Endpoint(
    name="chat",
    path_suffix="/chat/completions",
    output_limit_keys=("max_completion_tokens", "max_tokens"),
    templated=True,
    usage_on_request=True,
    operation="chat",
    choices_key="n",
    tokenize=True,
)
COMPLETIONS = Endpoint(
    name="completions",
    path_suffix="/completions",
    output_limit_keys=("max_tokens",),
    templated=False,
    usage_on_request=True,
    operation="text_completion",
    default_max_tokens=16,
    choices_key="n",
    tokenize=True,
)
RESPONSES = Endpoint(
    name="responses",
    path_suffix="/responses",
    output_limit_keys=("max_output_tokens",),
    templated=True,
    usage_on_request=False,
    operation="chat",
)

# Longest suffix first: ``/chat/completions`` must win over ``/completions``.
_BY_SUFFIX = sorted((CHAT, COMPLETIONS, RESPONSES), key=lambda e: -len(e.path_suffix))
REGISTRY: Mapping[str, Endpoint] = MappingProxyType({e.name: e for e in (CHAT, COMPLETIONS, RESPONSES)})
NAMES: tuple[str, ...] = tuple(REGISTRY)


def by_path(method: str, path: str) -> Endpoint | None:
    """The API a request is for, or None for anything the router does not parse (it goes long)."""
    if method != "POST":
        return None
    path = path.split("?", 1)[0].rstrip("/")
    for endpoint in _BY_SUFFIX:
        if path.endswith(endpoint.path_suffix):
            return endpoint
    return None


def named(name: str) -> Endpoint | None:
    return REGISTRY.get(name)


def default_max_tokens(name: str) -> int | None:
    """The output limit the engine applies to a request of this API that sets none (None: the rest of
    the context, also for unknown names)."""
    endpoint = REGISTRY.get(name)
    return None if endpoint is None else endpoint.default_max_tokens


def templated(name: str) -> bool:
    """Whether a shape's API renders the prompt through the chat template (unknown names: no)."""
    endpoint = REGISTRY.get(name)
    return endpoint is not None and endpoint.templated
