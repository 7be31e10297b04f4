"""The Kubernetes operator of Shazamq: `python -m shazamq.operator`.

Why a package of its own: the operator runs in its own process and depends only on
`shazamq.config` (the models of the broker's configuration and of the `ShazamqCluster`
resource), never on the broker's internals. Its layers, each a module:

- `crd`: the CustomResourceDefinition, generated from the models;
- `resources`: what should exist for a cluster (pure functions, Strimzi style);
- `status`: what to report about it (pure functions);
- `kube`: a small async Kubernetes API client (server-side apply);
- `metrics`: the operator's Prometheus metrics;
- `handlers`: the Kopf handlers that sequence the above;
- `__main__`: the process (watch scope from ``WATCH_NAMESPACE``, ports, logging).

Importing this package imports neither Kopf nor the handlers, so `crd` and `resources`
work where Kopf is not installed.
"""
