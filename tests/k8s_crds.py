"""Validates the operator resources of rendered Kubernetes manifests against their
CustomResourceDefinitions, which kubernetes-validate does not know, and passes the rest
on: `python3 tests/k8s_crds.py RENDERED.yaml BUILTIN_OUT.yaml`.

The CRDs are vendored in tests/fixtures/ (today CloudNativePG's `Cluster`). A resource
of an operator group with no vendored CRD is an error, not a pass. As a check on the
check, each resource is also validated once spoiled (`spec.instances: "three"`, which
every `Cluster` schema refuses) and must then fail.
"""

import copy
import sys
from pathlib import Path

import jsonschema
import yaml

FIXTURES = Path(__file__).parent / "fixtures"
CRDS = [FIXTURES / "cnpg" / "postgresql.cnpg.io_clusters.yaml"]


def schemas():
    """(group/version, kind) -> the version's openAPIV3Schema."""
    found = {}
    for path in CRDS:
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            found[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
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
        spoiled = copy.deepcopy(doc)
        spoiled["spec"]["instances"] = "three"
        if not errors(schema, spoiled):
            problems.append(f"{kind} {name}: the schema accepted a spoiled copy; the check checks nothing")
    with open(builtin_out, "w") as out:
        yaml.safe_dump_all(builtins, out, sort_keys=False)
    for problem in problems:
        print(f"{rendered}: {problem}")
    if checked:
        print(f"[k8s_crds] {checked} operator resource(s) checked against their CRDs")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
