"""What the rendered Kubernetes manifests must hold against a hostile pod (SPEC §10),
checked without a cluster: `python3 tests/k8s_security.py RENDERED.yaml...`.

- NetworkPolicies: ingress denied by default; NATS's client port only from Natter, its
  route port only from NATS; Postgres only from Natter; Natter's HTTP port only from the
  ingress controller's namespace and its metrics port only from monitoring.
- NATS: authorization on, its monitoring port on loopback and on no Service or
  container port; Natter signs in with the password from the Secret.
- NATS routes: the cluster block has an authorization whose password comes from a
  Secret, and every route URL (to every NATS pod) carries that user and that Secret's
  password, never a literal: a server that routes in without it is no peer.
- /metrics: on Natter's own metrics port, which no Ingress routes and no Service with a
  cluster IP; only a headless Service names it, for a ServiceMonitor (Prometheus scrapes
  the pods themselves), and a ServiceMonitor scrapes that port and nothing else.
- No secret this repository ever published as Natter's token key.
"""

import ipaddress
import re
import sys

import yaml

SHIPPED = {
    "local-only-secret-change-me-in-production",
    "dev-only-secret-dev-only-secret-dev-only",
    "change-me-to-at-least-32-random-bytes",
    "CHANGE-ME-TO-48-RANDOM-BYTES",
}


def conf_block(text, name):
    """The body of the first `name { ... }` block of a NATS conf, or ""."""
    match = re.search(r"(?m)^\s*" + re.escape(name) + r"\s*[:=]?\s*\{", text)
    if not match:
        return ""
    depth = 1
    for i in range(match.end(), len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[match.end():i]
    return ""


def conf_value(text, key):
    match = re.search(r"\b" + re.escape(key) + r"\s*[:=]\s*(\"[^\"]*\"|'[^']*'|[^\s,}]+)", text)
    return match.group(1).strip("\"'") if match else None


def route_problems(nats_conf, statefulset):
    """Why the NATS cluster would take a server that routes in without a Secret's
    password as a peer, if it would."""
    problems = []
    if not statefulset:
        return ["a NATS StatefulSet"]
    container = next(c for c in statefulset["spec"]["template"]["spec"]["containers"] if c["name"] == "nats")
    env = {e["name"]: e for e in container.get("env", [])}
    if any(a.split("=", 1)[0] in ("--routes", "-r", "--cluster", "--cluster_user", "--cluster_pass")
           for a in container.get("args", [])):
        problems.append("NATS routes and cluster from nats.conf alone, not flags")

    def from_secret(variable):
        return bool(env.get(variable, {}).get("valueFrom", {}).get("secretKeyRef"))

    cluster = conf_block(nats_conf, "cluster")
    authorization = conf_block(cluster, "authorization")
    user, password = conf_value(authorization, "user"), conf_value(authorization, "password")
    variable = password[1:] if password and password.startswith("$") else None
    if not (user and variable and from_secret(variable)):
        return problems + ["NATS route authorization: a user and a password from a Secret"]
    routes = re.search(r"\broutes\s*[:=]?\s*\[(.*?)\]", cluster, re.S)
    entries = routes.group(1).split() if routes else []
    hosts = set()
    for entry in (e.strip(",") for e in entries):
        url = entry
        if entry.startswith("$"):
            url = env.get(entry[1:], {}).get("value", "")
        match = re.fullmatch(r"nats(?:-route)?://([^:@/]+):\$\(([A-Za-z_][A-Za-z0-9_]*)\)@([^:/]+):6222/?", url)
        if not (match and match.group(1) == user and match.group(2) == variable):
            problems.append(f"NATS route {entry} carries the route user and the Secret's password")
        else:
            hosts.add(match.group(3))
    service = statefulset["spec"]["serviceName"]
    pods = {f"{statefulset['metadata']['name']}-{i}.{service}" for i in range(statefulset["spec"]["replicas"])}
    if hosts != pods:
        problems.append(f"NATS routes to every NATS pod ({sorted(pods)}), not {sorted(hosts)}")
    return problems


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
    problems.extend(route_problems(nats_conf, by_kind.get("StatefulSet", {}).get("nats")))
    natter_config = next(
        (cm["data"] for name, cm in by_kind.get("ConfigMap", {}).items() if name.startswith("natter-config")), {}
    )
    need(natter_config.get("METRICS_ADDR", "").endswith(":9090"), "METRICS_ADDR set")
    need(all(url.startswith("nats://natter@") for url in natter_config.get("NATS_URL", "").split(",")),
         "Natter signs in to NATS as natter")
    need(natter_config.get("NATS_PASSWORD_FILE"), "Natter reads the NATS password from the Secret")
    # Client addresses (SPEC §18): the ingress controller's X-Forwarded-For, believed from
    # private pod addresses only, while the NetworkPolicy admits only the controller.
    trusted = [n.strip() for n in natter_config.get("TRUSTED_PROXIES", "").split(",") if n.strip()]
    need(trusted and all(ipaddress.ip_network(n).is_private for n in trusted),
         f"TRUSTED_PROXIES names private ranges only ({trusted})")

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
