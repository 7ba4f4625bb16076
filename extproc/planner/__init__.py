"""Fleet planner: a discrete-event simulator of vLLM pools with the real router in the loop, the
closed-form cost model, and fleet sizing for homogeneous vs dual-pool deployments."""
