"""Real vLLM engines for the embedded stack and the end-to-end suite.

The router's promises about vLLM (what ``usage`` says, which 400s the net sees, what ``/metrics``
exposes) are only as good as the engine they are checked against, so the stack can run real vLLM
instead of the emulator. This package installs the CPU build of vLLM into a venv of its own (torch
never meets the router's dependencies), builds a tiny Llama-3-shaped model offline, and says how to
start a server for one pool. Everything slow is cached under a key derived from what produced it, and
built atomically, so a second run (or a second test session at the same time) starts from the cache.

It sits beside the emulator: the stack (above) picks one or the other per run.
"""
