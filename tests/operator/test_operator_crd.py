"""The generated ShazamqCluster CRD (`shazamq.operator.crd`).

Covers: the committed CRD files equal what the generator writes (``--check`` too); the
Helm copy is plain YAML for kubectl and a template for Helm; names, short name, scope,
status and scale subresources, printer columns; the schema is structural (a type on every
node, no refs, unions or `additionalProperties: false`), preserves unknown fields only for
the opaque Kubernetes objects, and carries the broker's bounds, enums and defaults; the
README's clusters are accepted by the schema and bad values are rejected by it; the CRD
passes kubernetes-validate.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import msgspec
import pytest
import yaml
from operator_support import README_CLUSTERS, ROOT, validate_manifest

from shazamq.config import MirrorSource, StorageConfig
from shazamq.operator import crd

PRESERVED = {
    ".spec.storage.volumeClaimTemplate",
    ".spec.resources",
    ".spec.tolerations[]",
    ".spec.affinity",
    ".spec.config",  # broker settings, checked by the operator with the broker's model
}


def test_committed_files_are_what_the_generator_writes() -> None:
    for path, text in crd.outputs().items():
        assert path.exists(), f"{path} is missing: run python -m shazamq.operator.crd --write"
        assert path.read_text("utf-8") == text, (
            f"{path.relative_to(ROOT)} is stale: run python -m shazamq.operator.crd --write"
        )
    assert crd.main(["--check"]) == 0


def test_helm_copy_is_plain_yaml_equal_to_the_manifest() -> None:
    plain = yaml.safe_load(crd.MANIFEST_PATH.read_text())
    helm = yaml.safe_load(crd.HELM_PATH.read_text())
    assert helm["metadata"].pop("annotations") == {"helm.sh/resource-policy": "keep"}
    assert helm == plain == crd.build_crd()
    text = crd.HELM_PATH.read_text()
    assert text.startswith("# {{- if .Values.crds.install }}\n")
    assert text.endswith("# {{- end }}\n")
    assert "  # {{- if .Values.crds.keep }}\n" in text


def test_names_scope_and_subresources() -> None:
    obj = crd.build_crd()
    assert obj["metadata"]["name"] == "shazamqclusters.shazamq.io"
    spec = obj["spec"]
    assert spec["group"] == "shazamq.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "ShazamqCluster"
    assert spec["names"]["shortNames"] == ["sqc"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Version": ".spec.version",
        "Replicas": ".spec.replicas",
        "Ready": ".status.readyReplicas",
        "Phase": ".status.phase",
        "Age": ".metadata.creationTimestamp",
    }


def test_crd_passes_kubernetes_validate() -> None:
    validate_manifest(crd.build_crd())


def walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    for name, child in (node.get("properties") or {}).items():
        found += walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        found += walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        found += walk(node["additionalProperties"], f"{path}{{}}")
    return found


SCHEMA = crd.openapi_schema()
FORBIDDEN = {"$ref", "$defs", "anyOf", "oneOf", "allOf", "title", "uniqueItems", "definitions"}


def test_schema_is_structural() -> None:
    for path, node in walk(SCHEMA):
        assert not (FORBIDDEN & set(node)), f"{path}: {sorted(FORBIDDEN & set(node))}"
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        assert node.get("additionalProperties") is not False, path
        assert node.get("required", [None]), f"{path}: empty required"
        if "properties" in node:
            assert "additionalProperties" not in node, path


def test_unknown_fields_are_preserved_only_for_opaque_kubernetes_objects() -> None:
    preserved = {p for p, n in walk(SCHEMA) if n.get("x-kubernetes-preserve-unknown-fields")}
    assert preserved == PRESERVED


def test_bounds_enums_and_defaults_come_from_the_broker_models() -> None:
    nodes = dict(walk(SCHEMA))
    storage = StorageConfig()
    segment = nodes[".spec.storage.segmentBytes"]
    assert segment["default"] == storage.segment_bytes
    broker_min = msgspec.json.schema(StorageConfig)["$defs"]["StorageConfig"]["properties"][
        "segment_bytes"
    ]["minimum"]
    assert segment["minimum"] == broker_min
    protocol = nodes[".spec.mirror.sources[].securityProtocol"]
    assert set(protocol["enum"]) == {"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"}
    assert protocol["default"] == "PLAINTEXT"
    consumers = nodes[".spec.mirror.sources[].numConsumers"]
    assert (consumers["minimum"], consumers["maximum"]) == (1, 1024)
    source_fields = {f.name: f for f in msgspec.structs.fields(MirrorSource)}
    assert consumers["default"] == source_fields["num_consumers"].default
    assert nodes[".spec.version"]["default"] == "0.1.0-rc1"
    assert nodes[".spec.image"]["default"] == "shazamq/shazamq"
    assert nodes[".spec.service.port"]["default"] == 9092
    assert nodes[".spec.service.metricsPort"]["default"] == 9090
    assert nodes[".spec.replicas"]["minimum"] == 0
    assert nodes[".spec.tieredStorage.provider"]["enum"] == ["gcs", "s3"]
    assert nodes[".spec.tieredStorage.s3"]["nullable"] is True
    assert nodes[".spec.tieredStorage.s3"]["required"] == ["bucket"]
    assert nodes[".spec.service"]["default"] == {}
    assert nodes[".spec.replication.minInsyncReplicas"]["minimum"] == 1


def test_spec_field_names_are_camel_case() -> None:
    for path, _ in walk(SCHEMA):
        assert "_" not in path.rsplit(".", 1)[-1], path


def as_json_schema(node: Any) -> Any:
    """OpenAPI v3 (nullable, x-kubernetes-*) -> JSON Schema, to validate documents here."""
    if isinstance(node, list):
        return [as_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: as_json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
    if out.pop("nullable", False):
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False  # what pruning would drop, the test rejects
    return out


VALIDATOR = jsonschema.Draft7Validator(as_json_schema(SCHEMA))


@pytest.mark.parametrize("name", sorted(README_CLUSTERS))
def test_readme_clusters_are_accepted_by_the_schema(name: str) -> None:
    body = README_CLUSTERS[name]()
    errors = sorted(VALIDATOR.iter_errors(body), key=str)
    assert not errors, [f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors]


@pytest.mark.parametrize(
    "patch",
    [
        {"replicas": -1},
        {"version": "has space"},
        {"imagePullPolicy": "Sometimes"},
        {"storage": {"segmentBytes": 1}},
        {"tieredStorage": {"provider": "azure"}},
        {"mirror": {"sources": [{"name": "x"}]}},
        {
            "mirror": {
                "sources": [{"name": "x", "bootstrapServers": "k", "securityProtocol": "TLS"}]
            }
        },
        {"service": {"type": "Ingress"}},
        {"security": {"auth": {"mechanism": "GSSAPI"}}},
        {"monitoring": {"serviceMonitor": {"interval": "often"}}},
        {"podLabels": {"a": 1}},
        {"autoscaling": {"minReplicas": 0}},
        {"autoscaling": {"maxReplicas": 1001}},
        {"autoscaling": {"targets": {"cpuUtilizationPercent": 0}}},
        {"autoscaling": {"targets": {"bytesInPerSecond": "fast"}}},
        {"autoscaling": {"targets": {"replicas": 3}}},
        {"autoscaling": {"scaleUpStabilizationSeconds": -1}},
        {"autoscaling": {"scaleDownStabilizationSeconds": 3601}},
        {"tieredStorage": {"restore": "yes"}},
    ],
)
def test_bad_values_are_rejected_by_the_schema(patch: dict[str, Any]) -> None:
    body = README_CLUSTERS["quick-start"]()
    body["spec"] = {**copy.deepcopy(body["spec"]), **patch}
    assert list(VALIDATOR.iter_errors(body))
