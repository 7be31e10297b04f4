"""The ShazamqCluster CustomResourceDefinition, generated from the models in `shazamq.config`.

Why generated: the spec models are the one source of truth for what a cluster may say, so
the CRD's OpenAPI schema must never be edited by hand. `msgspec.json.schema` gives a JSON
Schema of the spec and status models; `structural()` rewrites it into the *structural*
schema Kubernetes requires (every `$ref` inlined, `anyOf [X, null]` turned into
`nullable: true`, a `type` on every node, no `additionalProperties: false`, no titles) and
adds the defaults of fields whose default is built by a factory.

The same CRD is written to two places (`python -m shazamq.operator.crd --write`):

- ``manifests/shazamqcluster-crd.yaml``: plain YAML for ``kubectl apply``;
- ``helm/shazamq-operator/templates/crds/shazamqcluster.yaml``: the same YAML, which is
  also a Helm template. Its Helm directives (``crds.install``, ``crds.keep``) sit inside
  YAML comments (``# {{- if ... }}``), so the file stays valid plain YAML for
  ``kubectl apply -f helm/shazamq-operator/templates/crds/``, while Helm evaluates them.

``--write`` also refreshes the spec reference of the user guide: the table between the
``BEGIN GENERATED`` and ``END GENERATED`` markers of ``docs/operator.md``, made from the
same schema (field, type and bounds, default, description) by `spec_reference()`;
``--docs`` prints it.

``--check`` exits non-zero when a committed file differs from what would be written; a test
does the same.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import msgspec
import yaml

from shazamq.config import ShazamqClusterSpec, ShazamqClusterStatus

GROUP = "shazamq.io"
VERSION = "v1alpha1"
KIND = "ShazamqCluster"
PLURAL = "shazamqclusters"
SINGULAR = "shazamqcluster"
SHORT_NAMES = ["sqc"]
CRD_NAME = f"{PLURAL}.{GROUP}"
API_VERSION = f"{GROUP}/{VERSION}"

ROOT = Path(__file__).resolve().parents[2]
MANIFEST_PATH = ROOT / "manifests" / "shazamqcluster-crd.yaml"
HELM_PATH = ROOT / "helm" / "shazamq-operator" / "templates" / "crds" / "shazamqcluster.yaml"
DOCS_PATH = ROOT / "docs" / "operator.md"
DOCS_BEGIN = "<!-- BEGIN GENERATED: spec reference (python -m shazamq.operator.crd --write) -->"
DOCS_END = "<!-- END GENERATED: spec reference -->"

_HEADER = (
    "# Generated from shazamq/config.py by `python -m shazamq.operator.crd --write`; do not edit.\n"
)

PRINTER_COLUMNS = [
    {"name": "Version", "type": "string", "jsonPath": ".spec.version"},
    {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
    {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

# JSON Schema keywords that a structural schema does not use (or forbids).
_DROPPED = {"title", "$defs", "$schema"}
_JSON_TYPES = {str: "string", bool: "boolean", int: "integer", float: "number"}


class SchemaError(ValueError):
    """The models produced a schema that cannot be made structural."""


def _struct_classes(root: type[msgspec.Struct]) -> dict[str, type[msgspec.Struct]]:
    """Every Struct class reachable from `root`, by the name msgspec gives its `$defs` entry."""
    found: dict[str, type[msgspec.Struct]] = {}

    def walk(t: msgspec.inspect.Type) -> None:
        if isinstance(t, msgspec.inspect.StructType):
            if t.cls.__name__ not in found:
                found[t.cls.__name__] = t.cls
                for f in t.fields:
                    walk(f.type)
        elif isinstance(t, msgspec.inspect.Metadata):
            walk(t.type)
        elif isinstance(t, msgspec.inspect.UnionType):
            for member in t.types:
                walk(member)
        elif isinstance(
            t, msgspec.inspect.ListType | msgspec.inspect.VarTupleType | msgspec.inspect.SetType
        ):
            walk(t.item_type)
        elif isinstance(t, msgspec.inspect.DictType):
            walk(t.value_type)

    walk(msgspec.inspect.type_info(root))
    return found


def _factory_defaults(
    defs: dict[str, Any], classes: dict[str, type[msgspec.Struct]], *, with_defaults: bool
) -> None:
    """Give fields with a `default_factory` their default (msgspec's schema omits most)."""
    for name, cls in classes.items():
        props = defs.get(name, {}).get("properties", {})
        for f in msgspec.structs.fields(cls):
            prop = props.get(f.encode_name)
            if prop is None:
                continue
            if not with_defaults:
                prop.pop("default", None)
            elif f.default_factory is not msgspec.NODEFAULT:
                prop["default"] = _plain(f.default_factory())


def _plain(value: Any) -> Any:
    """A default as JSON values (tuples become lists, structs objects)."""
    return msgspec.json.decode(msgspec.json.encode(value))


def _enum_type(values: list[Any]) -> str:
    types = {_JSON_TYPES.get(type(v)) for v in values}
    if len(types) != 1 or None in types:
        raise SchemaError(f"enum of mixed or unsupported types: {values!r}")
    return types.pop()  # type: ignore[return-value]


def structural(node: Any, defs: dict[str, Any], path: str = "") -> Any:
    """Rewrite one JSON Schema node (from msgspec) into a Kubernetes structural schema node."""
    if not isinstance(node, dict):
        return node
    node = dict(node)
    ref = node.pop("$ref", None)
    if ref is not None:
        target = defs[ref.rsplit("/", 1)[-1]]
        node = {**target, **node}  # keys beside the $ref (description, default) win
    any_of = node.pop("anyOf", None)
    if any_of is not None:
        branches = [b for b in any_of if b != {"type": "null"}]
        if len(branches) != 1:
            raise SchemaError(f"{path or '<root>'}: a union other than `X | None`")
        if len(branches) < len(any_of):
            node["nullable"] = True
        inner = structural(branches[0], defs, path)
        node = {**inner, **{k: v for k, v in node.items() if k != "default"}, **_default(node)}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED:
            continue
        if key == "additionalProperties" and value is False:
            continue  # forbidding unknown fields is the default of structural schemas (pruning)
        if key == "required" and not value:
            continue
        if key == "default" and value is None:
            continue
        if key == "properties":
            out[key] = {k: structural(v, defs, f"{path}.{k}") for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = structural(value, defs, f"{path}[]")
        elif key == "default":
            out[key] = _plain(value)
        else:
            out[key] = value
    if "enum" in out and "type" not in out:
        out["type"] = _enum_type(out["enum"])
    if "type" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        raise SchemaError(f"{path or '<root>'}: schema node without a type: {out!r}")
    return _ordered(out)


def _default(node: dict[str, Any]) -> dict[str, Any]:
    return {"default": node["default"]} if node.get("default") is not None else {}


_KEY_ORDER = ("description", "type", "format", "nullable", "enum", "default")


def _ordered(node: dict[str, Any]) -> dict[str, Any]:
    """A stable, readable key order: description and type first, nested schemas last."""
    head = {k: node[k] for k in _KEY_ORDER if k in node}
    tail = ("required", "properties", "items", "additionalProperties")
    nested = {k: node[k] for k in tail if k in node}
    rest = {k: v for k, v in node.items() if k not in head and k not in nested}
    return {**head, **rest, **nested}


def model_schema(model: type[msgspec.Struct], *, with_defaults: bool = True) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of one model (spec or status)."""
    top = msgspec.json.schema(model)
    defs = top.get("$defs", {})
    _factory_defaults(defs, _struct_classes(model), with_defaults=with_defaults)
    return structural(top, defs)


def openapi_schema() -> dict[str, Any]:
    """The CRD's `openAPIV3Schema`: spec and status from the models, the rest standard."""
    spec = model_schema(ShazamqClusterSpec)
    spec["default"] = {}
    status = model_schema(ShazamqClusterStatus, with_defaults=False)
    return {
        "description": "A Shazamq cluster: Kafka-compatible brokers run as a StatefulSet.",
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def build_crd() -> dict[str, Any]:
    """The CustomResourceDefinition object."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {
                "app.kubernetes.io/name": "shazamq-operator",
                "app.kubernetes.io/part-of": "shazamq",
            },
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": ["shazamq"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                }
            ],
        },
    }


def _dump(obj: Any) -> str:
    return yaml.safe_dump(obj, sort_keys=False, width=100, allow_unicode=True)


def render_manifest() -> str:
    """The plain YAML of ``manifests/shazamqcluster-crd.yaml``."""
    return _HEADER + _dump(build_crd())


def render_helm_template() -> str:
    """The chart's CRD: the same YAML, with Helm directives hidden in YAML comments."""
    crd = build_crd()
    body = _dump(crd)
    anchor = "metadata:\n  name: " + CRD_NAME + "\n"
    if anchor not in body:  # pragma: no cover - a change of build_crd() would show here
        raise SchemaError("unexpected CRD layout")
    keep = (
        "  # {{- if .Values.crds.keep }}\n"
        "  annotations:\n"
        "    helm.sh/resource-policy: keep\n"
        "  # {{- end }}\n"
    )
    body = body.replace(anchor, anchor + keep, 1)
    return (
        "# {{- if .Values.crds.install }}\n"
        + _HEADER
        + "# Also valid plain YAML: `kubectl apply -f helm/shazamq-operator/templates/crds/`.\n"
        + body
        + "# {{- end }}\n"
    )


# -- the spec reference of docs/operator.md ------------------------------------------------------


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _json(value: Any) -> str:
    return "`" + _cell(msgspec.json.encode(value).decode()) + "`"


def _type(node: dict[str, Any], required: bool) -> str:
    t = node.get("type", "object")
    if "enum" in node:
        text = "one of " + ", ".join(f"`{v}`" for v in node["enum"])
    elif t == "array":
        item = node.get("items") or {}
        text = "list of " + ("objects" if item.get("type", "object") == "object" else item["type"])
    elif t == "object" and isinstance(node.get("additionalProperties"), dict):
        text = "map of " + node["additionalProperties"].get("type", "object")
    elif t == "object" and node.get("x-kubernetes-preserve-unknown-fields"):
        text = "object (Kubernetes)"
    else:
        text = t
    lo, hi = node.get("minimum"), node.get("maximum")
    if lo is not None and hi is not None:
        text += f", {lo}..{hi}"
    elif lo is not None:
        text += f", >= {lo}"
    elif hi is not None:
        text += f", <= {hi}"
    lo, hi = node.get("minLength"), node.get("maxLength")
    if lo is not None and hi is not None:
        text += f", {lo}..{hi} characters"
    elif hi is not None:
        text += f", at most {hi} characters"
    elif lo is not None:
        text += f", at least {lo} character{'s' if lo > 1 else ''}"
    if required:
        text += ", **required**"
    elif node.get("nullable"):
        text += ", optional"
    return text


def _default_cell(node: dict[str, Any]) -> str:
    if "default" not in node:
        return ""
    value = node["default"]
    if node.get("type") == "object" and node.get("properties"):
        return ""  # a section: its fields carry the defaults
    return _json(value)


def spec_reference() -> str:
    """The Markdown table of every spec field, from the CRD's schema."""
    rows = ["| Field | Type | Default | Description |", "| --- | --- | --- | --- |"]

    def walk(node: dict[str, Any], path: str, required: bool) -> None:
        rows.append(
            f"| `{path}` | {_type(node, required)} | {_default_cell(node)} | "
            f"{_cell(node.get('description', ''))} |"
        )
        children: dict[str, Any] = {}
        needed: list[str] = []
        if node.get("type") == "object":
            children, needed = node.get("properties") or {}, node.get("required") or []
        elif node.get("type") == "array":
            item = node.get("items") or {}
            children, needed = item.get("properties") or {}, item.get("required") or []
            path += "[]"
        for name, child in children.items():
            walk(child, f"{path}.{name}", name in needed)

    spec = model_schema(ShazamqClusterSpec)
    for name, child in spec["properties"].items():
        walk(child, name, name in (spec.get("required") or []))
    return "\n".join(rows) + "\n"


def render_docs(current: str) -> str:
    """`current` (docs/operator.md) with the generated block replaced by `spec_reference()`."""
    begin, end = current.find(DOCS_BEGIN), current.find(DOCS_END)
    if begin < 0 or end < begin:
        raise SchemaError(f"{DOCS_PATH.name} lacks the markers {DOCS_BEGIN!r} ... {DOCS_END!r}")
    head = current[: begin + len(DOCS_BEGIN)]
    return head + "\n\n" + spec_reference() + "\n" + current[end:]


def outputs() -> dict[Path, str]:
    """Every generated file and its content."""
    docs = DOCS_PATH.read_text("utf-8") if DOCS_PATH.exists() else f"{DOCS_BEGIN}\n{DOCS_END}\n"
    return {
        MANIFEST_PATH: render_manifest(),
        HELM_PATH: render_helm_template(),
        DOCS_PATH: render_docs(docs),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shazamq.operator.crd",
        description="Print (default), write or check the generated ShazamqCluster CRD.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="write the generated files")
    mode.add_argument("--check", action="store_true", help="fail if a file is out of date")
    mode.add_argument("--docs", action="store_true", help="print the spec reference table")
    args = parser.parse_args(argv)
    if args.write:
        for path, text in outputs().items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
        return 0
    if args.check:
        stale = [
            p for p, text in outputs().items() if not p.exists() or p.read_text("utf-8") != text
        ]
        for p in stale:
            print(
                f"out of date: {p.relative_to(ROOT)} (run python -m shazamq.operator.crd --write)"
            )
        return 1 if stale else 0
    if args.docs:
        sys.stdout.write(spec_reference())
        return 0
    sys.stdout.write(render_manifest())
    return 0


if __name__ == "__main__":
    sys.exit(main())
