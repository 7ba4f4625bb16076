"""Envoy names the rendered configs and the router both use: cluster names (the router's live-load
discovery reads Envoy's admin by them) and the attempt-count header the net adds for the router. A leaf
module below the config: the config (discovery defaults), the server (the attempt header) and the
renderer all import it, and it imports nothing of the project."""

ROUTER_CLUSTER = "budget_router"
SHORT_CLUSTER = "pool_short"
SHORT_FAILOVER_CLUSTER = "pool_short_failover"
SHORT_NET_CLUSTER = "pool_short_then_long"  # the composite net: attempt 1 short, the retry long
LONG_CLUSTER = "pool_long"
OTEL_CLUSTER = "otel_collector"
# Envoy adds it on the short route (the router sees "2" when the long pool answered a retry) and removes
# it before the client sees the answer.
ATTEMPT_COUNT_HEADER = "x-budget-attempts"
