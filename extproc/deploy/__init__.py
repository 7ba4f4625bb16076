"""Deployments as operators run them: the fleet's shape and what is rendered from it.

The pools' shape (context, ``max_num_seqs``, replicas) is written once, in ``fleet``; the engines'
flags and the router's contexts and capacities are both derived from it, for ``budget-router up``
(``extproc.stack``), ``docker-compose.yml`` (``compose``) and the Kubernetes manifests
(``kubernetes``). A router told another shape than its pools hold spills too late or routes requests
to a pool that cannot hold them; deriving both sides from one value makes that impossible by
construction. ``watchdog`` restarts compose containers Docker's own restart policy leaves dead.
"""
