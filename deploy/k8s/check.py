"""Checks rendered rill manifests for what the Kubernetes schemas cannot see.

Usage: python check.py RENDERED.yaml...   (cargo xtask deploy-check renders every overlay and
runs this after kubernetes-validate). Exits 1 and lists every problem found.

Per file (one rendered kustomization):
- the controller and broker StatefulSets exist, count from ordinal 1, and take node.id from the
  pod-index label; their serviceName is a headless Service selecting their pods, published
  before readiness;
- controller.quorum.voters in both TOML files of the ConfigMap names exactly the controller
  pods <statefulset>-<ordinal>.<headless service>:<grpc port>, ids = ordinals;
- brokers advertise $(POD_NAME).<headless service>.$(POD_NAMESPACE).svc:<grpc port> (and on the
  Kafka listener's port when broker.toml sets kafka.listeners);
- every ConfigMap a pod mounts is in the output (generated names with their hash);
- containers have startup, liveness (gRPC on the listener port) and readiness probes, requests
  and limits, run as non-root with a read-only root filesystem, no privilege escalation, all
  capabilities dropped; service links are off (they would inject RILL_* variables);
- pods prefer or require spreading over nodes; brokers get time for controlled shutdown;
- a PodDisruptionBudget with maxUnavailable 1 selects each StatefulSet's pods;
- a client Service selects the brokers on their listener port.
"""

import re
import sys
import tomllib

import yaml

POD_INDEX = "metadata.labels['apps.kubernetes.io/pod-index']"


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def check(path):
    problems = []

    def need(ok, what):
        if not ok:
            problems.append(f"{path}: {what}")

    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    services = by_kind.get("Service", {})
    configmaps = by_kind.get("ConfigMap", {})
    sets = by_kind.get("StatefulSet", {})
    pdbs = by_kind.get("PodDisruptionBudget", {}).values()

    for name in ("rill-controller", "rill-broker"):
        need(name in sets, f"no StatefulSet {name}")
    if problems:
        return problems

    ports = {}
    for name, sts in sets.items():
        spec = sts["spec"]
        tmpl = spec["template"]
        labels = tmpl["metadata"]["labels"]
        pod = tmpl["spec"]
        need(selects(spec["selector"]["matchLabels"], labels), f"{name}: selector misses its pods")
        need(spec.get("ordinals", {}).get("start") == 1, f"{name}: ordinals must start at 1 (node.id)")
        svc = services.get(spec["serviceName"])
        need(svc is not None, f"{name}: serviceName {spec['serviceName']} is not a Service here")
        if svc:
            need(svc["spec"].get("clusterIP") == "None", f"{name}: {svc['metadata']['name']} is not headless")
            need(svc["spec"].get("publishNotReadyAddresses") is True,
                 f"{name}: {svc['metadata']['name']} must publish not-ready addresses")
            need(selects(svc["spec"].get("selector"), labels), f"{name}: its headless Service misses its pods")
        need(pod.get("enableServiceLinks") is False, f"{name}: enableServiceLinks must be false")
        psc = pod.get("securityContext", {})
        need(psc.get("runAsNonRoot") is True, f"{name}: runAsNonRoot")
        need(isinstance(psc.get("runAsUser"), int) and psc["runAsUser"] > 0, f"{name}: numeric non-root runAsUser")
        need(psc.get("fsGroup") == psc.get("runAsGroup"), f"{name}: fsGroup must let the user write its volume")
        anti = pod.get("affinity", {}).get("podAntiAffinity", {})
        terms = anti.get("requiredDuringSchedulingIgnoredDuringExecution", []) + [
            t["podAffinityTerm"] for t in anti.get("preferredDuringSchedulingIgnoredDuringExecution", [])
        ]
        need(any(t.get("topologyKey") == "kubernetes.io/hostname"
                 and selects(t.get("labelSelector", {}).get("matchLabels"), labels) for t in terms),
             f"{name}: no pod anti-affinity across nodes")
        mounts_config = False
        for vol in pod.get("volumes", []):
            if "configMap" in vol:
                cm = vol["configMap"]["name"]
                need(cm in configmaps, f"{name}: mounts ConfigMap {cm}, which is not in the output")
                mounts_config = True
        need(mounts_config, f"{name}: mounts no ConfigMap")
        claims = [c["metadata"]["name"] for c in spec.get("volumeClaimTemplates", [])]
        (c,) = pod["containers"]
        need(any(m["name"] in claims and m["mountPath"] == "/var/lib/rill" for m in c.get("volumeMounts", [])),
             f"{name}: /var/lib/rill is not on a volume claim")
        grpc = next((p["containerPort"] for p in c.get("ports", []) if p["name"] == "grpc"), None)
        need(grpc is not None, f"{name}: no port named grpc")
        ports[name] = grpc
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            need(probe in c, f"{name}: no {probe}")
        need(c.get("livenessProbe", {}).get("grpc", {}).get("port") == grpc,
             f"{name}: the liveness probe must be gRPC health on the listener port")
        res = c.get("resources", {})
        for kind in ("requests", "limits"):
            need("cpu" in res.get(kind, {}) and "memory" in res.get(kind, {}), f"{name}: resources.{kind} cpu and memory")
        csc = c.get("securityContext", {})
        need(csc.get("readOnlyRootFilesystem") is True, f"{name}: readOnlyRootFilesystem")
        need(csc.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation false")
        need(csc.get("capabilities", {}).get("drop") == ["ALL"], f"{name}: drop ALL capabilities")
        env = env_of(c)
        node_id = env.get("RILL_NODE_ID", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        need(node_id == POD_INDEX, f"{name}: RILL_NODE_ID must come from the pod-index label")
        per_pod = ("RILL_NODE_ID", "RILL_ADVERTISED_LISTENERS", "RILL_KAFKA_ADVERTISED_LISTENERS")
        need(not [e for e in env if e.startswith("RILL_") and e not in per_pod],
             f"{name}: shared settings belong in the ConfigMap, not in RILL_* variables")
        matching = [p for p in pdbs if selects(p["spec"]["selector"].get("matchLabels"), labels)]
        need(len(matching) == 1 and matching[0]["spec"].get("maxUnavailable") == 1,
             f"{name}: needs one PodDisruptionBudget with maxUnavailable 1")

    ctrl = sets["rill-controller"]
    brk = sets["rill-broker"]
    expected = ",".join(
        f"{i}@rill-controller-{i}.{ctrl['spec']['serviceName']}:{ports['rill-controller']}"
        for i in range(1, ctrl["spec"]["replicas"] + 1)
    )
    cm_name = next(v["configMap"]["name"] for v in ctrl["spec"]["template"]["spec"]["volumes"] if "configMap" in v)
    cm = configmaps.get(cm_name, {}).get("data", {})
    for toml_file in ("controller.toml", "broker.toml"):
        need(toml_file in cm, f"ConfigMap {cm_name} has no {toml_file}")
        if toml_file in cm:
            conf = tomllib.loads(cm[toml_file])
            voters = conf.get("controller", {}).get("quorum", {}).get("voters")
            need(voters == expected, f"{toml_file}: controller.quorum.voters is {voters!r}, the pods are {expected!r}")
            if toml_file == "broker.toml":
                rf = conf.get("offsets", {}).get("topic", {}).get("replication", {}).get("factor", 3)
                need(int(rf) <= brk["spec"]["replicas"], "offsets.topic.replication.factor exceeds the brokers")

    advertised = env_of(brk["spec"]["template"]["spec"]["containers"][0]).get("RILL_ADVERTISED_LISTENERS", {})
    want = f"$(POD_NAME).{brk['spec']['serviceName']}.$(POD_NAMESPACE).svc:{ports['rill-broker']}"
    need(advertised.get("value") == want, f"rill-broker: RILL_ADVERTISED_LISTENERS should be {want}")
    # The Kafka listener, when the ConfigMap turns it on: the same stable name on its port.
    broker_conf = tomllib.loads(cm.get("broker.toml", ""))
    kafka_listener = broker_conf.get("kafka", {}).get("listeners")
    if kafka_listener:
        kafka_port = kafka_listener.rsplit(":", 1)[-1]
        kafka_adv = env_of(brk["spec"]["template"]["spec"]["containers"][0]).get("RILL_KAFKA_ADVERTISED_LISTENERS", {})
        want = f"$(POD_NAME).{brk['spec']['serviceName']}.$(POD_NAMESPACE).svc:{kafka_port}"
        need(kafka_adv.get("value") == want, f"rill-broker: RILL_KAFKA_ADVERTISED_LISTENERS should be {want}")
    need(brk["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30) >= 60,
         "rill-broker: terminationGracePeriodSeconds below 60 cuts controlled shutdown short")

    broker_labels = brk["spec"]["template"]["metadata"]["labels"]
    clients = [s for s in services.values()
               if s["spec"].get("clusterIP") != "None" and selects(s["spec"].get("selector"), broker_labels)]
    need(any(any(p.get("targetPort") in ("grpc", ports["rill-broker"]) for p in s["spec"]["ports"]) for s in clients),
         "no client (bootstrap) Service on the brokers' listener")
    for s in services.values():
        need(re.fullmatch(r"[a-z0-9-]+", s["metadata"]["name"]) is not None, f"Service name {s['metadata']['name']}")
    return problems


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    problems = [p for path in sys.argv[1:] for p in check(path)]
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"check.py: {len(sys.argv) - 1} rendered kustomizations consistent")


if __name__ == "__main__":
    main()
