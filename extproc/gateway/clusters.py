"""Envoy cluster names the rendered configs use; the router's config names them too (live-load
discovery through Envoy's admin), so they live apart from the renderer, which imports the config."""

ROUTER_CLUSTER = "budget_router"
SHORT_CLUSTER = "pool_short"
SHORT_FAILOVER_CLUSTER = "pool_short_failover"
SHORT_NET_CLUSTER = "pool_short_then_long"  # the composite net: attempt 1 short, the retry long
LONG_CLUSTER = "pool_long"
OTEL_CLUSTER = "otel_collector"
