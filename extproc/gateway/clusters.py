"""Envoy names the rendered configs and the router both use: cluster names (the router's live-load
discovery reads Envoy's admin by them) and the attempt-count header the net adds for the router. They
live apart from the renderer, which imports the config, so the server never imports the renderer."""

ROUTER_CLUSTER = "budget_router"
SHORT_CLUSTER = "pool_short"
SHORT_FAILOVER_CLUSTER = "pool_short_failover"
SHORT_NET_CLUSTER = "pool_short_then_long"  # the composite net: attempt 1 short, the retry long
LONG_CLUSTER = "pool_long"
OTEL_CLUSTER = "otel_collector"
# Envoy adds it on the short route (the router sees "2" when the long pool answered a retry) and removes
# it before the client sees the answer.
ATTEMPT_COUNT_HEADER = "x-budget-attempts"
