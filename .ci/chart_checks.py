"""The chart's assertions, one small named check each, run by .ci/chart-check.

    chart_checks.py rendering FILE         checks of one rendered chart (hardening, drain, versions)
    chart_checks.py releases DIR           checks across the renderings of ci/*-values.yaml in DIR
    chart_checks.py monitoring VALUES KPS  the kube-prometheus-stack example against the chart

Prints one line per check ("ok   name" or "FAIL name: why") and exits 1 if any failed.
"""

import sys

import yaml


def load(path):
    return [d for d in yaml.safe_load_all(open(path)) if d]


def deployments(docs):
    return [d for d in docs if d["kind"] == "Deployment"]


def pod(d):
    return d["spec"]["template"]["spec"]


def container(d):
    return pod(d)["containers"][0]


def env(d):
    return {e["name"]: e for e in container(d).get("env", [])}


def by_container(docs, name):
    return [d for d in deployments(docs) if container(d)["name"] == name]


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()) and all(
        labels.get(e["key"]) in e["values"] for e in selector.get("matchExpressions", [])
    )


# --- One rendering -------------------------------------------------------------------------


def pods_are_hardened(docs):
    """Non-root, no service account token, read-only root, no privilege escalation, all
    capabilities dropped, three probes and a memory limit in every container."""
    for d in deployments(docs):
        spec = pod(d)
        assert spec["securityContext"]["runAsNonRoot"] is True, d["metadata"]["name"]
        assert spec.get("automountServiceAccountToken") is False, d["metadata"]["name"]
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"], c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert probe in c, (c["name"], probe)
            assert c.get("resources", {}).get("limits", {}).get("memory"), c["name"]


def no_secret_in_plain_env(docs):
    """No value that looks like a secret; a connection string from a Secret rolls the pods on
    rotation (its checksum is an annotation)."""
    for d in deployments(docs):
        for c in pod(d)["containers"]:
            for e in c.get("env", []):
                assert "secret" not in e.get("value", "").lower(), (c["name"], e["name"])
                if "secretKeyRef" in e.get("valueFrom", {}) and e["name"] == "DURABLE_TASK_SCHEDULER_CONNECTION_STRING":
                    annotations = d["spec"]["template"]["metadata"].get("annotations", {})
                    assert "checksum/dts-secret" in annotations, (c["name"], annotations)


def drain_covers_the_longest_activity(docs):
    """The worker's drain covers the longest activity the gateway accepts (its default, 3600 s),
    and the grace period exceeds the drain."""
    max_delay = next(
        (int(e["value"]) for g in by_container(docs, "gateway") for n, e in env(g).items() if n == "GATEWAY__MAX_DELAY_SECONDS"),
        3600,
    )
    for w in by_container(docs, "worker"):
        drain = int(env(w)["WORKER__DRAIN_TIMEOUT_SECONDS"]["value"])
        assert pod(w)["terminationGracePeriodSeconds"] > drain, "grace period must exceed the drain"
        assert drain >= max_delay, f"drain {drain} s < the longest activity {max_delay} s"


def one_version_per_worker_deployment(docs):
    """Each worker Deployment takes its own version, none selects another's pods, and the
    gateway starts at the main worker's version."""
    workers = by_container(docs, "worker")
    versions = [env(w).get("WORKER__ORCHESTRATION_VERSION", {}).get("value") for w in workers]
    assert len(set(versions)) == len(versions), ("two worker Deployments take the same version", versions)
    if len(workers) < 2:
        return
    assert None not in versions, ("an unversioned worker beside others takes their work", versions)
    for i, w in enumerate(workers):
        selector = w["spec"]["selector"]["matchLabels"]
        for j, other in enumerate(workers):
            if i != j:
                labels = other["spec"]["template"]["metadata"]["labels"]
                assert not all(labels.get(k) == v for k, v in selector.items()), ("overlapping worker selectors", selector)
    current = next(env(g)["GATEWAY__ORCHESTRATION_VERSION"]["value"] for g in by_container(docs, "gateway"))
    main = next(v for w, v in zip(workers, versions) if w["metadata"]["name"].endswith("-worker"))
    assert current == main, ("the gateway starts at a version its main worker does not run", current, main)


def keda_owns_the_worker_replicas(docs):
    """With a ScaledObject: no replicas field on the worker and no HPA of ours for it."""
    if not any(d["kind"] == "ScaledObject" for d in docs):
        return
    for w in by_container(docs, "worker"):
        assert "replicas" not in w["spec"], "replicas set beside a ScaledObject"
    assert not any(d["kind"] == "HorizontalPodAutoscaler" and d["metadata"]["name"].endswith("-worker") for d in docs)


RENDERING = [
    pods_are_hardened,
    no_secret_in_plain_env,
    drain_covers_the_longest_activity,
    one_version_per_worker_deployment,
    keda_owns_the_worker_replicas,
]


def write_rules(path, docs):
    """The PrometheusRule's groups, for promtool (next to the rendering)."""
    for d in docs:
        if d["kind"] == "PrometheusRule":
            open(path + ".rules.yaml", "w").write(yaml.safe_dump({"groups": d["spec"]["groups"]}))


# --- Across renderings ---------------------------------------------------------------------

IMDS = ("169.254.169.254/32", 80)
ENTRA = {("20.190.128.0/18", 443), ("40.126.0.0/18", 443)}


class Releases:
    def __init__(self, directory):
        self.directory = directory

    def docs(self, name):
        return load(f"{self.directory}/{name}.yaml")

    def policies(self, name):
        def component(n):
            return "scheduler" if n.endswith("local-scheduler") else n.rsplit("-", 1)[-1]

        return {component(d["metadata"]["name"]): d["spec"] for d in self.docs(name) if d["kind"] == "NetworkPolicy"}


def egress(spec):
    return {
        (to["ipBlock"]["cidr"], p["port"])
        for rule in spec["egress"]
        for to in rule.get("to", [])
        for p in rule.get("ports", [])
        if "ipBlock" in to
    }


def identity_egress_follows_authentication(r):
    """Managed identity reaches IMDS and not Entra; workload identity reaches Entra and not IMDS;
    with the local scheduler only the gateway reaches its OIDC issuer."""
    mi = r.policies("managed-identity-values")
    for c in ("gateway", "worker"):
        assert IMDS in egress(mi[c]), (c, egress(mi[c]))
        assert not ENTRA & egress(mi[c]), c
    wi = r.policies("default-values")
    for c in ("gateway", "worker"):
        assert ENTRA <= egress(wi[c]) and IMDS not in egress(wi[c]), (c, egress(wi[c]))
    local = r.policies("network-policy-values")
    assert ENTRA <= egress(local["gateway"]), "the gateway reaches its OIDC issuer"
    assert not ENTRA & egress(local["worker"]), "the worker needs no identity provider with the local scheduler"


def scheduler_takes_only_the_release_pods(r):
    """The scheduler's gRPC port takes the gateway, workers (all versions) and dashboard only;
    the dashboard takes port-forwarded traffic only."""
    local = r.policies("network-policy-values")
    (rule,) = [x for x in local["scheduler"]["ingress"] if x["ports"] == [{"port": "grpc"}]]
    (peer,) = rule["from"]
    assert peer["podSelector"]["matchExpressions"] == [
        {"key": "app.kubernetes.io/component", "operator": "In", "values": ["gateway", "worker", "worker-previous", "dashboard"]}
    ], peer
    assert local["dashboard"]["ingress"] == [], "the dashboard takes port-forwarded traffic only"
    assert "dashboard" not in r.policies("default-values"), "no dashboard unless enabled"


def callbacks_leave_from_the_worker_only(r):
    """Only the worker reaches callback receivers, on 443; both services get the callback
    settings; none are set by default."""
    local = r.policies("network-policy-values")
    assert ("203.0.113.0/24", 443) in egress(local["worker"]), egress(local["worker"])
    assert not any(c == "203.0.113.0/24" for c, _ in egress(local["gateway"]))
    docs = r.docs("network-policy-values")
    w = env(next(d for d in deployments(docs) if d["metadata"]["name"].endswith("-worker")))
    g = env(next(d for d in deployments(docs) if d["metadata"]["name"].endswith("-gateway")))
    assert w["WORKER__CALLBACK_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": "callback-secret", "key": "callback-secret"}
    assert w["WORKER__CALLBACK_HOSTS"]["value"] == g["GATEWAY__CALLBACK_HOSTS"]["value"] == "hooks.example.com"
    assert w["WORKER__CALLBACK_ALLOWED_NETWORKS"]["value"] == g["GATEWAY__CALLBACK_ALLOWED_NETWORKS"]["value"] == "10.20.0.0/16"
    default_env = {n for d in deployments(r.docs("default-values")) for n in env(d)}
    assert "GATEWAY__CALLBACK_HOSTS" not in default_env


def scheduler_policy_whenever_it_runs(r):
    """The local scheduler's gRPC port takes no credentials: its policy renders whenever it
    runs, networkPolicy.enabled or not."""
    only = r.policies("local-scheduler-values")
    assert set(only) == {"scheduler"}, only
    assert any(x["ports"] == [{"port": "grpc"}] for x in only["scheduler"]["ingress"])


def workers_scale_on_the_demand(r):
    """KEDA's query in the release's namespace with a threshold that follows the activity
    slots; the HPA's external metric is the one prometheus-adapter serves."""
    keda = next(d for d in r.docs("keda-values") if d["kind"] == "ScaledObject")
    trigger = keda["spec"]["triggers"][0]["metadata"]
    assert 'namespace="default"' in trigger["query"] and "worker_work_items_in_flight" in trigger["query"], trigger
    assert trigger["threshold"] == "16", trigger
    hpa = next(
        d for d in r.docs("autoscaling-values") if d["kind"] == "HorizontalPodAutoscaler" and d["metadata"]["name"].endswith("-worker")
    )
    external = hpa["spec"]["metrics"][0]["external"]
    adapter = yaml.safe_load(open("k8s/monitoring/prometheus-adapter-values.yaml"))
    assert external["metric"]["name"] == adapter["rules"]["external"][0]["name"]["as"], (external, adapter)
    assert external["target"] == {"type": "AverageValue", "averageValue": "80"}, external


def previous_workers_get_the_worker_policy(r):
    """In a rollout the previous version's worker pods get the worker's policy and reach the
    scheduler."""
    docs = r.docs("rollout-values")
    policy = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}
    worker_policy = next(v for k, v in policy.items() if k.endswith("-worker"))
    scheduler = next(v for k, v in policy.items() if k.endswith("-local-scheduler"))
    peer = next(x for x in scheduler["ingress"] if x["ports"] == [{"port": "grpc"}])["from"][0]["podSelector"]
    previous = [d for d in deployments(docs) if d["metadata"]["name"].endswith("-worker-v1")]
    assert previous, "the rollout renders the previous version's Deployment"
    labels = previous[0]["spec"]["template"]["metadata"]["labels"]
    assert selects(worker_policy["podSelector"], labels), labels
    assert selects(peer, labels), (peer, labels)


RELEASES = [
    identity_egress_follows_authentication,
    scheduler_takes_only_the_release_pods,
    callbacks_leave_from_the_worker_only,
    scheduler_policy_whenever_it_runs,
    workers_scale_on_the_demand,
    previous_workers_get_the_worker_policy,
]


# --- The monitoring example ----------------------------------------------------------------


def kube_prometheus_stack_watches_the_chart(chart_values, kps_values):
    """The dashboard label, and PodMonitors and rules from any release."""
    chart = yaml.safe_load(open(chart_values))
    kps = yaml.safe_load(open(kps_values))
    ((label, value),) = chart["monitoring"]["grafanaDashboard"]["labels"].items()
    sidecar = kps["grafana"]["sidecar"]["dashboards"]
    assert (sidecar["label"], sidecar["labelValue"]) == (label, value), sidecar
    spec = kps["prometheus"]["prometheusSpec"]
    assert spec["podMonitorSelectorNilUsesHelmValues"] is False and spec["ruleSelectorNilUsesHelmValues"] is False
    assert "exemplar-storage" in spec["enableFeatures"]


def run(checks, *args):
    failed = 0
    for check in checks:
        try:
            check(*args)
            print(f"ok   {check.__name__}")
        except Exception as e:  # noqa: BLE001 - every failure is reported, then the next check runs
            failed += 1
            print(f"FAIL {check.__name__}: {type(e).__name__}: {e}")
    return failed


def main(argv):
    if len(argv) == 2 and argv[0] == "rendering":
        docs = load(argv[1])
        write_rules(argv[1], docs)
        return run(RENDERING, docs)
    if len(argv) == 2 and argv[0] == "releases":
        return run(RELEASES, Releases(argv[1]))
    if len(argv) == 3 and argv[0] == "monitoring":
        return run([kube_prometheus_stack_watches_the_chart], argv[1], argv[2])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(1 if main(sys.argv[1:]) else 0)
