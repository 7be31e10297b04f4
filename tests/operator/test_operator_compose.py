"""docker-compose.yml: the default single broker and the `cluster` profile's three brokers.

There is no Docker engine here: the file is parsed, Compose's ``${VAR:-default}``
interpolation is applied, and each service's environment is loaded by the broker's own
loader (`shazamq.config.load_config`), as the container would. Covers: the single broker
stays the default service; the three cluster brokers have ids 0..2, one voter list naming
the services on the quorum port, one secret (the documented local default, or the
variable), their own volumes, and each advertises its service name with a port it listens
on and publishes unchanged, none clashing with the single broker's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import pytest
import yaml
from operator_support import ROOT

from shazamq.config import BrokerConfig, load_config

COMPOSE = ROOT / "docker-compose.yml"
CLUSTER = ["shazamq-0", "shazamq-1", "shazamq-2"]
DEFAULT_SECRET = "local-only-insecure-cluster-secret"
_VAR = re.compile(r"\$\{(?P<name>\w+)(?::-(?P<default>[^}]*))?\}")


def services() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(COMPOSE.read_text())
    return dict(doc["services"])


def interpolate(value: str, shell: Mapping[str, str]) -> str:
    """Compose's ``${NAME}`` and ``${NAME:-default}`` (unset or empty: the default)."""
    return _VAR.sub(lambda m: shell.get(m["name"]) or m["default"] or "", value)


def broker_config(service: dict[str, Any], shell: Mapping[str, str] | None = None) -> BrokerConfig:
    """What the broker in this service's container loads (no config file: the image's)."""
    env = {"SHAZAMQ_BROKER__DATA_DIR": "/data/shazamq"}  # the image's ENV
    env.update({k: interpolate(str(v), shell or {}) for k, v in service["environment"].items()})
    return load_config(None, environ=env)


def published(service: dict[str, Any]) -> dict[int, int]:
    """host port -> container port."""
    pairs = (str(p).split(":") for p in service.get("ports", []))
    return {int(host): int(container) for host, container in pairs}


def test_the_single_broker_is_the_default_service() -> None:
    single = services()["shazamq"]
    assert "profiles" not in single
    assert published(single) == {9092: 9092, 9090: 9090}
    config = broker_config(single)
    assert not config.cluster.enabled
    assert config.broker.advertised_host == "localhost"


def test_the_cluster_profile_is_one_cluster_of_three() -> None:
    all_services = services()
    configs = {name: broker_config(all_services[name]) for name in CLUSTER}
    taken = set(published(all_services["shazamq"]))
    for node_id, name in enumerate(CLUSTER):
        service, config = all_services[name], configs[name]
        assert service["profiles"] == ["cluster"]
        assert config.broker.node_id == node_id
        assert config.broker.advertised_host == name == service["hostname"]
        # one listener, one address for clients and peers: the same port everywhere
        assert config.broker.advertised_port is None
        assert published(service) == {config.broker.port: config.broker.port}
        assert not taken & set(published(service)), "a host port is published twice"
        taken |= set(published(service))
        assert config.cluster.voter_map() == {i: (CLUSTER[i], 9093) for i in range(3)}
        assert config.cluster.voters == configs[CLUSTER[0]].cluster.voters
        assert config.cluster.read_secret() == DEFAULT_SECRET
        assert config.replication.default_replication_factor == 3
        assert config.replication.min_insync_replicas == 2
    volumes = [tuple(all_services[name]["volumes"]) for name in CLUSTER]
    assert len(set(volumes)) == 3
    assert all(v[0].endswith(":/data/shazamq") for v in volumes)
    declared = set(yaml.safe_load(COMPOSE.read_text())["volumes"])
    assert {v[0].split(":")[0] for v in volumes} <= declared


@pytest.mark.parametrize("name", CLUSTER)
def test_the_cluster_secret_comes_from_the_environment(name: str) -> None:
    config = broker_config(services()[name], {"SHAZAMQ_CLUSTER_SECRET": "from-the-shell"})
    assert config.cluster.read_secret() == "from-the-shell"
