"""Client quotas (Kafka's produce, fetch and request-time quotas per user and client id).

`entities`: the quota entities, their validation and Kafka's precedence order; `rate`:
the sampled rate and the throttle time it implies; `manager`: the enforcement around
the handlers. The quotas themselves live in the cluster metadata (the single broker's
metadata document, or the replicated log of a cluster) and are changed with
AlterClientQuotas (``apis/client_quotas.py``).
"""
