"""budget-router: an Envoy ext_proc server that routes LLM requests to a short or a long vLLM pool
by their estimated total token budget, learning bytes-per-token online from response usage."""

__version__ = "0.1.0"
