"""What a compose stack must hold against a container that is not one of its own (SPEC
§10), checked without starting it: `python3 tests/compose_security.py RENDERED.yaml...`,
each the `docker-compose config` of a combination of compose files, rendered without
POSTGRES_PASSWORD or an .env file.

- NATS routes: every NATS server reads a nats.conf that a first-start service generates
  (run here twice, in scratch directories, with the paths of its volumes moved there);
  that conf's `cluster` block has an authorization whose password is generated (the two
  runs differ), and every route URL carries that user and password and names a NATS
  server; no command-line flag adds routes or a cluster listener beside it; and the
  volume that holds the route password is mounted by the NATS servers and its generator
  alone (Natter only needs its own password).
- Postgres: no password in any service's environment or DATABASE_URL, only files; the
  Postgres password file is generated the same way (the two runs differ), and Natter
  reads the same file.
- Client addresses (SPEC §18): the balancer's config appends `X-Forwarded-For` (HAProxy's
  `option forwardfor`), and Natter trusts it from private addresses only, while no
  node's HTTP port is published beside the balancer's.
"""

import os
import re
import subprocess
import sys
import tempfile

import yaml

PRIVATE_RANGES = {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"}

ROUTE_FLAGS = ("--routes", "--cluster", "--cluster_listen", "--cluster_name", "--cluster_user",
               "--cluster_pass", "-r", "--no_advertise", "--cluster_advertise")


def unescape(value):
    """A rendered value as the container sees it (`$$` is compose's escaped `$`)."""
    return value.replace("$$", "$") if isinstance(value, str) else value


def as_list(value):
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def environment(service):
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {k: unescape(v) for k, v in env.items()}


def mounts(service):
    """(volume, target, read_only) of a service's named volumes."""
    out = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            parts = volume.split(":")
            source, target = parts[0], parts[1]
            read_only = len(parts) > 2 and "ro" in parts[2].split(",")
        else:
            source, target = volume.get("source"), volume["target"]
            read_only = bool(volume.get("read_only"))
        out.append((source, target, read_only))
    return out


def volume_of(service, path):
    """(volume, path inside it) of the named volume `path` lies in, or (None, None)."""
    for source, target, _ in mounts(service):
        if path.startswith(target.rstrip("/") + "/"):
            return source, path[len(target.rstrip("/")) + 1:]
    return None, None


def writers(services, volume):
    return [name for name, s in services.items()
            if any(src == volume and not ro for src, _, ro in mounts(s))]


def run_generator(services, name, scratch):
    """Runs service `name`'s `/bin/sh -c` script with each of its volumes in `scratch`;
    returns {volume: its directory}."""
    service = services[name]
    entrypoint, command = as_list(service.get("entrypoint")), as_list(service.get("command"))
    argv = [unescape(a) for a in entrypoint + command]
    if argv[:2] != ["/bin/sh", "-c"]:
        raise ValueError(f"{name} is not a /bin/sh -c script")
    script = argv[2]
    dirs = {}
    # Longest target first, so that /auth does not rewrite /authx.
    for source, target, _ in sorted(mounts(service), key=lambda m: -len(m[1])):
        directory = os.path.join(scratch, source)
        os.makedirs(directory, exist_ok=True)
        dirs[source] = directory
        script = re.sub(re.escape(target.rstrip("/")) + r"(?=/|\b)", directory, script)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    env.update({k: v or "" for k, v in environment(service).items()})
    subprocess.run(["/bin/sh", "-c", script], check=True, env=env, capture_output=True, timeout=30)
    return dirs


def generated(services, service_name, path, scratch_root, runs):
    """The file `path` of `service_name`'s container as each generator run writes it."""
    volume, inside = volume_of(services[service_name], path)
    if volume is None:
        return None, None
    found = writers(services, volume)
    if len(found) != 1:
        return volume, None
    contents = []
    for run in range(runs):
        scratch = os.path.join(scratch_root, f"{found[0]}-{run}")
        if not os.path.isdir(scratch):
            run_generator(services, found[0], scratch)
        with open(os.path.join(scratch, volume, inside)) as f:
            contents.append(f.read())
    return volume, contents


def block(text, name):
    """The body of the first `name { ... }` block in a NATS conf, or None."""
    match = re.search(r"(?m)^\s*" + re.escape(name) + r"\s*[:=]?\s*\{", text)
    if not match:
        return None
    depth, start = 1, match.end()
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i]
    return None


def value(text, key):
    match = re.search(r"\b" + re.escape(key) + r"\s*[:=]\s*(\"[^\"]*\"|'[^']*'|[^\s,}]+)", text)
    return match.group(1).strip("\"'") if match else None


def route_auth(conf):
    """(user, password, [route URLs]) of a NATS conf's cluster block."""
    cluster = block(conf, "cluster") or ""
    authorization = block(cluster, "authorization") or ""
    routes = re.search(r"\broutes\s*[:=]?\s*\[(.*?)\]", cluster, re.S)
    urls = re.findall(r"[a-z-]+://[^\s,\]]+", routes.group(1)) if routes else []
    return value(authorization, "user"), value(authorization, "password"), urls


def check(path, scratch_root):
    rendered = yaml.safe_load(open(path))
    services = rendered["services"]
    problems = []

    def need(condition, what):
        if not condition:
            problems.append(what)

    # NATS servers: the services that run nats-server with a config file.
    nats = {name: s for name, s in services.items()
            if "--config" in as_list(s.get("command")) and "nats" in str(s.get("image", ""))}
    need(nats, "NATS servers (a nats image with --config)")
    route_volumes = set()
    for name, service in nats.items():
        command = [unescape(a) for a in as_list(service.get("command"))]
        flags = [a for a in command if a.split("=", 1)[0] in ROUTE_FLAGS]
        need(not flags, f"{name}: routes or the cluster come from its nats.conf, not flags {flags}")
        conf_path = command[command.index("--config") + 1]
        volume, confs = generated(services, name, conf_path, scratch_root, runs=2)
        if not confs:
            problems.append(f"{name}: {conf_path} is written on the first start by one service")
            continue
        route_volumes.add(volume)
        seen = []
        for conf in confs:
            user, password, urls = route_auth(conf)
            seen.append(password)
            need(user and password, f"{name}: a cluster authorization with a user and password")
            need(urls, f"{name}: routes in its nats.conf")
            hosts = set()
            for url in urls:
                match = re.fullmatch(r"nats(?:-route)?://([^:@/]+):([^@/]+)@([^:/]+):(\d+)/?", url)
                need(match and match.group(1) == user and match.group(2) == password,
                     f"{name}: route {url.replace(password or '@@', '…')} carries the route user and password")
                if match:
                    hosts.add(match.group(3))
            need(hosts <= set(nats) and set(nats) <= hosts,
                 f"{name}: routes to every NATS server and nothing else ({sorted(hosts)})")
        need(len(seen) == 2 and seen[0] != seen[1],
             f"{name}: the route password is generated on the first start, not a literal")
    for volume in route_volumes:
        others = [n for n, s in services.items()
                  if n not in nats and any(src == volume for src, _, _ in mounts(s))]
        need(others == writers(services, volume),
             f"the volume {volume} (the route password) is mounted by NATS and its generator only, "
             f"not {others}")

    # Postgres: passwords only in files.
    for name, service in services.items():
        for key, val in environment(service).items():
            if "PASSWORD" in key and not key.endswith("_FILE"):
                need(not val, f"{name}: {key} is a literal ({val!r}), not a generated file")
            if key.endswith("DATABASE_URL") and val:
                for host in re.findall(r"://([^/?]*)", val):
                    userinfo = host.rsplit("@", 1)[0] if "@" in host else ""
                    need(":" not in userinfo, f"{name}: {key} carries a password")
    postgres = services.get("postgres", {})
    password_file = environment(postgres).get("POSTGRES_PASSWORD_FILE")
    need(password_file, "postgres: POSTGRES_PASSWORD_FILE")
    natter = services.get("natter", {})
    natter_file = environment(natter).get("DATABASE_PASSWORD_FILE")
    need(natter_file, "natter: DATABASE_PASSWORD_FILE")
    if natter_file:
        volume, passwords = generated(services, "natter", natter_file, scratch_root, runs=2)
        need(passwords and len(passwords) == 2 and passwords[0] and passwords[0] != passwords[1],
             "natter: the Postgres password file is generated on the first start")
        if password_file:
            need(volume_of(postgres, password_file) == volume_of(natter, natter_file),
                 "postgres and natter read the same password file")

    # Client addresses: from the balancer's header, believed from the compose network only.
    trusted = [n.strip() for n in (environment(natter).get("TRUSTED_PROXIES") or "").split(",")]
    need(trusted and all(n in PRIVATE_RANGES for n in trusted),
         f"natter: TRUSTED_PROXIES names only private ranges ({trusted})")
    need(not natter.get("ports"), "natter: no node port published beside the balancer's")
    balancers = [n for n, s in services.items() if "haproxy" in str(s.get("image", ""))]
    need(balancers, "a balancer (an haproxy image)")
    for name in balancers:
        configs = [v.get("source") if isinstance(v, dict) else v.split(":")[0]
                   for v in services[name].get("volumes") or []]
        configs = [c for c in configs if c and c.endswith("haproxy.cfg")]
        lines = [line.split("#")[0].strip() for c in configs for line in open(c)]
        need("option forwardfor" in lines, f"{name}: option forwardfor (X-Forwarded-For)")
    return problems


failed = False
for path in sys.argv[1:]:
    with tempfile.TemporaryDirectory() as scratch_root:
        for problem in dict.fromkeys(check(path, scratch_root)):
            print(f"{path}: missing: {problem}")
            failed = True
sys.exit(1 if failed else 0)
