"""Validates the operator resources of rendered Kubernetes manifests against their
CustomResourceDefinitions, which kubernetes-validate does not know, and passes the rest
on: `python3 tests/k8s_crds.py RENDERED.yaml BUILTIN_OUT.yaml`.

The CRDs are vendored in tests/fixtures/ (CloudNativePG's `Cluster`, the Prometheus
Operator's `ServiceMonitor`). A resource of an operator group with no vendored CRD is an
error, not a pass. Like the API server (and kubernetes-validate --strict), a field the
schema does not name is an error. As a check on the check, each resource is also
validated spoiled, once with a mistake of its kind (SPOILS) and once with an unknown
field in its spec, and must fail both times.
"""

import copy
import sys
from pathlib import Path

import jsonschema
import yaml

FIXTURES = Path(__file__).parent / "fixtures"
CRDS = [
    FIXTURES / "cnpg" / "postgresql.cnpg.io_clusters.yaml",
    FIXTURES / "prometheus-operator" / "monitoring.coreos.com_servicemonitors.yaml",
]


def spoil_cluster(spec):
    spec["instances"] = "three"


def spoil_service_monitor(spec):
    # A port number where the name of the Service's port belongs (numbers: targetPort).
    for endpoint in spec.get("endpoints") or []:
        endpoint["port"] = 9090


# kind -> a mistake every schema of that kind refuses, made in a copy of the spec.
SPOILS = {"Cluster": spoil_cluster, "ServiceMonitor": spoil_service_monitor}


def closed(schema):
    """The schema with unknown fields refused: every object schema that lists its
    properties and neither says what else it takes (additionalProperties) nor keeps
    unknown fields (x-kubernetes-preserve-unknown-fields, embedded resources) gets
    additionalProperties: false, which is what the API server's pruning and strict field
    validation amount to."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in ("properties", "patternProperties", "definitions"):
        if key in schema:
            out[key] = {name: closed(sub) for name, sub in schema[key].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(schema.get(key), dict):
            out[key] = closed(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            out[key] = [closed(sub) for sub in schema[key]]
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
            and not schema.get("x-kubernetes-embedded-resource")):
        out["additionalProperties"] = False
    return out


def schemas():
    """(group/version, kind) -> the version's openAPIV3Schema, closed."""
    found = {}
    for path in CRDS:
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            found[(f"{group}/{version['name']}", kind)] = closed(version["schema"]["openAPIV3Schema"])
    return found


def errors(schema, doc):
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def is_builtin(api_version):
    """Kubernetes's own groups: the core (`v1`), dotless ones (`apps`) and `*.k8s.io`."""
    group = api_version.rpartition("/")[0]
    return "." not in group or group.endswith(".k8s.io")


def main(rendered, builtin_out):
    known = schemas()
    docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
    builtins, problems, checked = [], [], 0
    for doc in docs:
        api, kind, name = doc["apiVersion"], doc["kind"], doc["metadata"]["name"]
        schema = known.get((api, kind))
        if schema is None:
            if is_builtin(api):
                builtins.append(doc)
            else:
                problems.append(f"{kind} {name}: no vendored CRD for {api}")
            continue
        checked += 1
        problems += [f"{kind} {name}: {e}" for e in errors(schema, doc)]
        if kind not in SPOILS:
            problems.append(f"{kind} {name}: no spoiled copy to check the check with (SPOILS)")
            continue
        for what, spoil in (("a spoiled copy", SPOILS[kind]),
                            ("an unknown field", lambda spec: spec.update(notAField=True))):
            spoiled = copy.deepcopy(doc)
            spoil(spoiled["spec"])
            if not errors(schema, spoiled):
                problems.append(f"{kind} {name}: the schema accepted {what}; the check checks nothing")
    with open(builtin_out, "w") as out:
        yaml.safe_dump_all(builtins, out, sort_keys=False)
    for problem in problems:
        print(f"{rendered}: {problem}")
    if checked:
        print(f"[k8s_crds] {checked} operator resource(s) checked against their CRDs")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
