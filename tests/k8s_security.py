"""What the rendered Kubernetes manifests must hold against a hostile pod (SPEC §10),
checked without a cluster: `python3 tests/k8s_security.py RENDERED.yaml...`.

- NetworkPolicies: ingress denied by default; NATS's client port only from Natter, its
  route port only from NATS; Postgres only from Natter; Natter's HTTP port only from the
  ingress controller's namespace and its metrics port only from monitoring.
- NATS: authorization on, its monitoring port on loopback and on no Service or
  container port; Natter signs in with the password from the Secret.
- /metrics: on Natter's own metrics port, which no Ingress routes and no Service with a
  cluster IP; only a headless Service names it, for a ServiceMonitor (Prometheus scrapes
  the pods themselves), and a ServiceMonitor scrapes that port and nothing else.
- No secret this repository ever published as Natter's token key.
"""

import sys

import yaml

SHIPPED = {
    "local-only-secret-change-me-in-production",
    "dev-only-secret-dev-only-secret-dev-only",
    "change-me-to-at-least-32-random-bytes",
    "CHANGE-ME-TO-48-RANDOM-BYTES",
}


def check(path):
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    problems = []

    def need(condition, what):
        if not condition:
            problems.append(what)

    policies = by_kind.get("NetworkPolicy", {})
    deny = policies.get("default-deny-ingress")
    need(deny and deny["spec"]["podSelector"] == {} and "ingress" not in deny["spec"],
         "a default-deny ingress policy for every pod")

    def allowed(name, port):
        """The pod and namespace selectors that may reach `name`'s pods on `port`."""
        policy = policies.get(name)
        if not policy:
            return None
        sources = []
        for rule in policy["spec"].get("ingress", []):
            if any(p.get("port") == port for p in rule.get("ports", [])):
                for source in rule.get("from", []):
                    sources.append(source)
        return sources

    def pods(name):
        return {"podSelector": {"matchLabels": {"app.kubernetes.io/name": name}}}

    def namespace(name):
        return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}

    need(allowed("nats", "client") == [pods("natter")], "NATS clients: Natter pods only")
    need(allowed("nats", "cluster") == [pods("nats")], "NATS routes: NATS pods only")
    need(allowed("postgres", 5432) == [pods("natter")], "Postgres: Natter pods only")
    need(allowed("natter", "http") == [namespace("ingress-nginx")], "Natter HTTP: the ingress only")
    need(allowed("natter", "metrics") == [namespace("monitoring")], "Natter metrics: monitoring only")

    def is_metrics(port):
        return port.get("name") == "metrics" or port.get("targetPort") in ("metrics", 9090) or port["port"] == 9090

    services = by_kind.get("Service", {})
    for name, service in services.items():
        for port in service["spec"]["ports"]:
            need(port["port"] != 8222 and port.get("targetPort") != 8222 and port.get("name") != "monitor",
                 f"Service {name} exposes NATS monitoring: {port}")
            if is_metrics(port):
                need(service["spec"].get("clusterIP") == "None"
                     and service["spec"].get("selector") == {"app.kubernetes.io/name": "natter"}
                     and port.get("name") == "metrics" and port.get("targetPort") == "metrics",
                     f"Service {name} routes the metrics port: {port} (only a headless Service may name it)")
    for monitor_name, monitor in by_kind.get("ServiceMonitor", {}).items():
        wanted = monitor["spec"]["selector"].get("matchLabels", {})
        targets = [s for s in services.values()
                   if wanted and wanted.items() <= s["metadata"].get("labels", {}).items()]
        need(targets, f"ServiceMonitor {monitor_name} selects a Service")
        for endpoint in monitor["spec"]["endpoints"]:
            ports = [p for s in targets for p in s["spec"]["ports"] if p.get("name") == endpoint.get("port")]
            need(ports and all(p.get("targetPort") == "metrics" for p in ports),
                 f"ServiceMonitor {monitor_name} scrapes the metrics port (which monitoring may reach)")
    for kind in ("StatefulSet", "Deployment"):
        for workload in by_kind.get(kind, {}).values():
            for container in workload["spec"]["template"]["spec"]["containers"]:
                for port in container.get("ports", []):
                    need(port["containerPort"] != 8222, f"{container['name']} declares the NATS monitoring port")

    nats_conf = next(
        (cm["data"]["nats.conf"] for name, cm in by_kind.get("ConfigMap", {}).items() if name.startswith("nats-config")),
        "",
    )
    need("http: 127.0.0.1:8222" in nats_conf, "NATS monitoring on loopback only")
    need("authorization" in nats_conf and "$NATS_PASSWORD" in nats_conf, "NATS authorization")
    natter_config = next(
        (cm["data"] for name, cm in by_kind.get("ConfigMap", {}).items() if name.startswith("natter-config")), {}
    )
    need(natter_config.get("METRICS_ADDR", "").endswith(":9090"), "METRICS_ADDR set")
    need(all(url.startswith("nats://natter@") for url in natter_config.get("NATS_URL", "").split(",")),
         "Natter signs in to NATS as natter")
    need(natter_config.get("NATS_PASSWORD_FILE"), "Natter reads the NATS password from the Secret")

    for ingress in by_kind.get("Ingress", {}).values():
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                need(path["backend"]["service"]["port"] == {"name": "http"},
                     f"Ingress {ingress['metadata']['name']} routes only the HTTP port")
    websocket = by_kind.get("Ingress", {}).get("natter-websocket")
    need(websocket and websocket["metadata"]["annotations"].get(
        "nginx.ingress.kubernetes.io/enable-access-log") == "false",
        "the WebSocket routes are not access-logged (tokens in query strings)")

    for secret in by_kind.get("Secret", {}).values():
        values = list((secret.get("stringData") or {}).values())
        need(not SHIPPED.intersection(values), f"Secret {secret['metadata']['name']} ships a published key")
    return problems


failed = False
for path in sys.argv[1:]:
    for problem in check(path):
        print(f"{path}: missing: {problem}")
        failed = True
sys.exit(1 if failed else 0)
