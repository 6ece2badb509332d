#!/usr/bin/env python3
"""The image and the chart's pods, run here: `make image-e2e` (run by `make test`).

Starts a private Docker engine, builds the offline base and the image from the Dockerfile,
renders the chart with `helm template`, and runs its pods as containers with exactly what the
rendered manifests say (user, group, fsGroup, read-only root, capabilities, privilege escalation,
environment, volumes, memory limits, Service names, probes). Then, against them: the smoke test
through the gateway's Service, the chart's `helm test` pod, a worker killed mid-operation, the
scheduler restarted on its volume, a short load with every container's peak memory, and a wrong
setting that must fail. Everything it starts is removed at the end, whatever happens.

Settings (environment): DOCKERD, DOCKER (Debian's client), HELM, BIN_DIR (binaries built with
`cargo build --profile image`), E2E_LOAD (starts in the load, default 3000), E2E_HELM_SET (extra
`--set key=value` items for the chart, space-separated: to show that a wrong value fails),
E2E_KEEP=1 (leave the engine and containers running, for debugging).
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "async-http-api"
DOCKERD = os.environ.get("DOCKERD", "/usr/sbin/dockerd")
DOCKER = os.environ.get("DOCKER", "/usr/bin/docker")
HELM = os.environ.get("HELM", str(ROOT / ".tools" / "bin" / "helm"))
BIN_DIR = Path(os.environ.get("BIN_DIR", ROOT / "target" / "image"))
LOAD = int(os.environ.get("E2E_LOAD", "3000"))
RELEASE = "api"
IMAGE_REPO, IMAGE_TAG = "async-http-api", "e2e"
BASE_IMAGE = "async-http-api-base:offline"
PROXY_IMAGE = "async-http-api-service-proxy:e2e"
BINARIES = ["gateway", "worker", "local-scheduler", "dashboard"]
LABEL = "async-http-api-e2e"


def log(msg):
    print(f"image-e2e: {msg}", flush=True)


class Failure(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Failure(msg)


# ---------------------------------------------------------------------------------------------
# The engine


class Engine:
    """A Docker engine of our own: private socket, data root and exec root, stopped at the end."""

    def __init__(self, work: Path):
        self.work = work
        self.sock = work / "docker.sock"
        self.env = dict(os.environ, DOCKER_HOST=f"unix://{self.sock}", DOCKER_BUILDKIT="1")
        self.proc = None

    def start(self):
        (self.work / "data").mkdir(parents=True)
        logf = open(self.work / "dockerd.log", "w")
        # No bridge of its own (docker0): the test's containers use the network it creates.
        self.proc = subprocess.Popen(
            [DOCKERD, "--host", f"unix://{self.sock}", "--data-root", str(self.work / "data"),
             "--exec-root", str(self.work / "exec"), "--pidfile", str(self.work / "dockerd.pid"),
             "--storage-driver", "overlay2", "--bridge", "none"],
            stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 60:
            if self.proc.poll() is not None:
                raise Failure(f"dockerd exited: {(self.work / 'dockerd.log').read_text()[-2000:]}")
            if subprocess.run([DOCKER, "version"], env=self.env, capture_output=True).returncode == 0:
                log(f"engine up in {time.monotonic() - t0:.1f} s")
                return
            time.sleep(0.2)
        raise Failure("dockerd did not answer within 60 s")

    def __call__(self, *args, check_rc=True, capture=True, input=None, timeout=600):
        r = subprocess.run([DOCKER, *args], env=self.env, capture_output=capture, text=True,
                           input=input, timeout=timeout)
        if check_rc and r.returncode != 0:
            raise Failure(f"docker {' '.join(args[:3])}... failed: {r.stderr or r.stdout}")
        return r

    def stop(self):
        if self.proc is None:
            return
        ids = self("ps", "-aq", "--filter", f"label={LABEL}", check_rc=False).stdout.split()
        if ids:
            self("rm", "-f", *ids, check_rc=False)
        self("network", "prune", "-f", check_rc=False)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        # containerd and its shims are children of dockerd's session.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------------------------------------
# Pods from the rendered manifests


def memory_bytes(q: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "K": 10**3, "M": 10**6, "G": 10**9}
    m = re.fullmatch(r"(\d+)([KMG]i?)?", str(q))
    check(m, f"memory quantity {q!r} not understood")
    return int(m.group(1)) * units.get(m.group(2) or "", 1)


class Cluster:
    """The rendered manifests, run as containers on one internal network."""

    def __init__(self, docker: Engine, work: Path, manifests: list, network: str):
        self.docker = docker
        self.work = work
        self.docs = manifests
        self.network = network
        self.pods = {}  # name -> (pod spec, labels)
        self.runs = 0

    def of_kind(self, kind):
        return [d for d in self.docs if d["kind"] == kind]

    def deployment(self, component):
        for d in self.of_kind("Deployment"):
            if d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == component:
                return d
        raise Failure(f"no Deployment for {component}")

    def host_dir(self, name, fs_group, mode):
        """A directory as the kubelet makes it for a volume: group fsGroup, setgid."""
        path = self.work / "volumes" / name
        if not path.exists():
            path.mkdir(parents=True)
            if fs_group is not None:
                os.chown(path, 0, fs_group)
            os.chmod(path, mode)
        return path

    def run_pod(self, name, spec, labels, env_override=None, wait=True):
        """`docker run` with what the pod spec says; returns the container's name."""
        check(len(spec["containers"]) == 1, f"{name}: one container expected")
        c = spec["containers"][0]
        psc = spec.get("securityContext", {})
        csc = c.get("securityContext", {})
        args = ["run", "-d", "--name", name, "--hostname", name, "--label", LABEL,
                "--network", self.network, "--network-alias", name, "--restart", "no"]
        uid = csc.get("runAsUser", psc.get("runAsUser"))
        gid = csc.get("runAsGroup", psc.get("runAsGroup"))
        non_root = csc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        image = c["image"]
        if uid is None:
            user = self.docker("image", "inspect", "-f", "{{.Config.User}}", image).stdout.strip()
            uid = int(user.split(":")[0]) if user.split(":")[0].isdigit() else None
        if non_root:
            # The kubelet refuses to start a container that would run as root.
            check(uid not in (None, 0), f"{name}: runAsNonRoot with a root or unknown user")
        if uid is not None:
            args += ["--user", f"{uid}:{gid if gid is not None else 0}"]
        fs_group = psc.get("fsGroup")
        if fs_group is not None:
            args += ["--group-add", str(fs_group)]
        for g in psc.get("supplementalGroups", []):
            args += ["--group-add", str(g)]
        if csc.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        caps = csc.get("capabilities", {})
        for cap in caps.get("drop", []):
            args += ["--cap-drop", cap]
        for cap in caps.get("add", []):
            args += ["--cap-add", cap]
        check(not csc.get("privileged"), f"{name}: privileged")
        if csc.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        limits = c.get("resources", {}).get("limits", {})
        if "memory" in limits:
            mem = memory_bytes(limits["memory"])
            args += ["--memory", str(mem), "--memory-swap", str(mem)]
        if "cpu" in limits:
            args += ["--cpus", str(limits["cpu"]).rstrip("m") if not str(limits["cpu"]).endswith("m")
                     else str(int(str(limits["cpu"])[:-1]) / 1000)]
        grace = spec.get("terminationGracePeriodSeconds", 30)
        args += ["--stop-timeout", str(grace)]
        env = {}
        for e in c.get("env", []):
            if "value" in e:
                env[e["name"]] = str(e["value"])
            elif "fieldRef" in e.get("valueFrom", {}):
                path = e["valueFrom"]["fieldRef"]["fieldPath"]
                check(path == "metadata.name", f"{name}: fieldRef {path} not supported here")
                env[e["name"]] = name
            else:
                raise Failure(f"{name}: env {e['name']} from {e.get('valueFrom')} not supported here")
        env.update(env_override or {})
        for k, v in env.items():
            args += ["-e", f"{k}={v}"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for m in c.get("volumeMounts", []):
            v = volumes[m["name"]]
            if "emptyDir" in v:
                # A new pod, a new emptyDir: what it held is gone when the pod is replaced.
                self.runs += 1
                src = self.host_dir(f"{name}-{m['name']}-{self.runs}", fs_group, 0o2777 if fs_group else 0o777)
            elif "persistentVolumeClaim" in v:
                claim = v["persistentVolumeClaim"]["claimName"]
                check(any(p["metadata"]["name"] == claim for p in self.of_kind("PersistentVolumeClaim")),
                      f"{name}: claim {claim} not in the manifests")
                src = self.host_dir(f"pvc-{claim}", fs_group, 0o2775 if fs_group else 0o755)
            else:
                raise Failure(f"{name}: volume {v} not supported here")
            ro = ",readonly" if m.get("readOnly") else ""
            args += ["--mount", f"type=bind,source={src},destination={m['mountPath']}{ro}"]
        command = c.get("command") or []
        if command:
            args += ["--entrypoint", command[0]]
        args.append(image)
        args += command[1:] + [str(a) for a in c.get("args", [])]
        self.docker(*args)
        self.pods[name] = (spec, labels)
        if wait:
            self.wait_ready(name)
        return name

    def ip(self, name):
        out = self.docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", name).stdout
        return json.loads(out)[self.network]["IPAddress"]

    def state(self, name):
        return json.loads(self.docker("inspect", "-f", "{{json .State}}", name).stdout)

    def port_number(self, name, port):
        c = self.pods[name][0]["containers"][0]
        if isinstance(port, int):
            return port
        for p in c.get("ports", []):
            if p.get("name") == port:
                return p["containerPort"]
        raise Failure(f"{name}: no port named {port}")

    def probe(self, name, which):
        c = self.pods[name][0]["containers"][0]
        p = c[which]["httpGet"]
        url = f"http://{self.ip(name)}:{self.port_number(name, p['port'])}{p['path']}"
        try:
            with urllib.request.urlopen(url, timeout=c[which].get("timeoutSeconds", 1) + 1) as r:
                return 200 <= r.status < 400
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, name, timeout=None):
        """The startup probe, then the readiness probe, as the kubelet polls them."""
        c = self.pods[name][0]["containers"][0]
        t0 = time.monotonic()
        for which in ("startupProbe", "readinessProbe"):
            if which not in c:
                continue
            p = c[which]
            budget = timeout or p.get("failureThreshold", 3) * p.get("periodSeconds", 10) + 10
            while not self.probe(name, which):
                st = self.state(name)
                if not st["Running"]:
                    raise Failure(f"{name} exited ({st['ExitCode']}) before {which} passed:\n"
                                  + self.logs(name)[-3000:])
                if time.monotonic() - t0 > budget:
                    raise Failure(f"{name}: {which} not passing after {budget} s:\n" + self.logs(name)[-3000:])
                time.sleep(0.2)
        # The liveness probe answers too.
        if "livenessProbe" in c:
            check(self.probe(name, "livenessProbe"), f"{name}: liveness probe fails when ready")
        log(f"{name} ready in {time.monotonic() - t0:.1f} s")

    def logs(self, name):
        r = self.docker("logs", name, check_rc=False)
        return r.stdout + r.stderr

    def services(self):
        """One proxy per Service, under its name: Service port -> each selected pod's target port."""
        for svc in self.of_kind("Service"):
            sel = svc["spec"]["selector"]
            pods = [n for n, (_, labels) in self.pods.items()
                    if all(labels.get(k) == v for k, v in sel.items())]
            check(pods, f"Service {svc['metadata']['name']} selects no pod")
            routes = []
            for p in svc["spec"]["ports"]:
                targets = ",".join(f"{pod}:{self.port_number(pod, p.get('targetPort', p['port']))}" for pod in pods)
                routes.append(f"{p['port']}={targets}")
            name = svc["metadata"]["name"]
            self.docker("run", "-d", "--name", name, "--label", LABEL, "--network", self.network,
                        "--network-alias", name, "--read-only", "--cap-drop", "ALL",
                        "--user", "65532:65532", "--entrypoint", "/usr/local/bin/service-proxy",
                        PROXY_IMAGE, *routes)
            log(f"Service {name}: {' '.join(routes)}")


# ---------------------------------------------------------------------------------------------
# HTTP against the gateway


def http(method, url, body=None, timeout=30):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def start(base, name, delay):
    code, _, text = http("POST", f"{base}/api/process", {"name": name, "delay_seconds": delay})
    check(code == 202, f"start {name}: {code} {text}")
    return json.loads(text)["id"]


def wait_done(base, op, seconds=60):
    deadline = time.monotonic() + seconds
    while True:
        code, _, text = http("GET", f"{base}/api/status/{op}?wait=20", timeout=30)
        check(code == 200, f"status {op}: {code} {text}")
        doc = json.loads(text)
        if doc["status"] in ("Succeeded", "Failed", "Canceled"):
            return doc
        check(time.monotonic() < deadline, f"{op} still {doc['status']} after {seconds} s")


def result(base, op):
    code, _, text = http("GET", f"{base}/api/result/{op}")
    check(code == 200, f"result {op}: {code} {text}")
    return json.loads(text)


def load(host, port, total, connections=16):
    """`total` starts over keep-alive connections; a 429/503 waits its Retry-After and retries.
    Returns (accepted ids, refusals, seconds)."""
    ids, refused, lock = [], {}, threading.Lock()
    body = json.dumps({"name": "load", "delay_seconds": 0}).encode()
    request = (f"POST /api/process HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    def one(sock, rfile):
        sock.sendall(request)
        status = int(rfile.readline().split()[1])
        headers = {}
        while (line := rfile.readline()) not in (b"\r\n", b""):
            k, _, v = line.decode().partition(":")
            headers[k.strip().lower()] = v.strip()
        text = rfile.read(int(headers.get("content-length", 0)))
        return status, headers, text

    def worker(n):
        sock = socket.create_connection((host, port), timeout=30)
        rfile = sock.makefile("rb")
        done = 0
        while done < n:
            status, headers, text = one(sock, rfile)
            if status == 202:
                with lock:
                    ids.append(json.loads(text)["id"])
                done += 1
            elif status in (429, 503):
                with lock:
                    refused[status] = refused.get(status, 0) + 1
                time.sleep(min(float(headers.get("retry-after", "1")), 2))
            else:
                raise Failure(f"load: {status} {text[:300]}")
            if headers.get("connection", "").lower() == "close":
                sock.close()
                sock = socket.create_connection((host, port), timeout=30)
                rfile = sock.makefile("rb")
        sock.close()

    t0 = time.monotonic()
    failures = []

    def guarded(n):
        try:
            worker(n)
        except Exception as e:  # noqa: BLE001 - reported below, with the others
            failures.append(e)

    threads = [threading.Thread(target=guarded, args=(n,)) for n in
               [total // connections + (i < total % connections) for i in range(connections)]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check(not failures, f"load: {failures[:3]}")
    return ids, refused, time.monotonic() - t0


# ---------------------------------------------------------------------------------------------


def peak_memory(docker, name):
    """Peak memory of a container: its cgroup's (what the limit applies to: v1 or v2) and its
    process's peak resident set, in bytes."""
    cid = docker("inspect", "-f", "{{.Id}}", name).stdout.strip()
    pid = int(docker("inspect", "-f", "{{.State.Pid}}", name).stdout.strip())
    # The container's cgroup, wherever the engine's own cgroup sits.
    cgroup = None
    for line in open(f"/proc/{pid}/cgroup"):
        _, controllers, path = line.strip().split(":", 2)
        if controllers in ("memory", ""):
            cgroup = (f"/sys/fs/cgroup/memory{path}/memory.max_usage_in_bytes" if controllers
                      else f"/sys/fs/cgroup{path}/memory.peak")
            if os.path.exists(cgroup):
                break
    check(cgroup and os.path.exists(cgroup), f"no memory accounting found for {name} ({cid[:12]})")
    hwm = next(int(line.split()[1]) * 1024 for line in open(f"/proc/{pid}/status")
               if line.startswith("VmHWM:"))
    return int(open(cgroup).read()), hwm


def terminated(signum, _frame):
    raise Failure(f"stopped by signal {signum}")


def main():
    signal.signal(signal.SIGTERM, terminated)
    signal.signal(signal.SIGINT, terminated)
    work = Path(tempfile.mkdtemp(prefix="image-e2e-"))
    docker = Engine(work / "engine")
    ok = False
    try:
        run(docker, work)
        ok = True
    except Failure as e:
        log(f"FAILED: {e}")
    finally:
        if os.environ.get("E2E_KEEP") == "1":
            log(f"kept: DOCKER_HOST=unix://{docker.sock}")
        else:
            docker.stop()
            shutil.rmtree(work, ignore_errors=True)
            leftovers = subprocess.run(["pgrep", "-f", str(work)], capture_output=True, text=True).stdout.split()
            mounts = [line.split()[1] for line in open("/proc/mounts") if str(work) in line]
            if leftovers or mounts or work.exists():
                log(f"FAILED: left behind: processes {leftovers}, mounts {mounts}, files {work.exists()}")
                ok = False
            else:
                log("engine stopped, containers and files removed")
    sys.exit(0 if ok else 1)


def run(docker: Engine, work: Path):
    """Every scenario, in order, against one set of pods."""
    for b in BINARIES + ["service-proxy"]:
        check((BIN_DIR / b).exists(), f"{BIN_DIR / b} missing: cargo build --profile image first")
    docker.start()
    image = build_images(docker, work)
    docs, helm_test = render_chart(docker, image)
    network = "e2e-internal"
    docker("network", "create", "--internal", "--label", LABEL, network)
    system = System(docker, Cluster(docker, work, docs, network))
    a_misconfigured_scheduler_exits_naming_the_key(system)
    system.start_all()
    smoke_through_the_gateway_service(system)
    the_helm_test_pod_passes(system, helm_test)
    a_killed_worker_leaves_its_operations_to_the_other(system)
    a_scheduler_restart_loses_nothing(system)
    memory_stays_under_the_limits_under_load(system)
    log("all passed")


def build_images(docker, work):
    """The offline base, the image from the Dockerfile's `prebuilt` target on it, the Service
    proxy. Returns the image's name."""
    t0 = time.monotonic()
    base_env = dict(docker.env, DOCKER=DOCKER)
    subprocess.run([str(ROOT / ".ci/image/offline-base"), BASE_IMAGE], env=base_env, check=True)
    context = work / "context"
    (context / "bin").mkdir(parents=True)
    for b in BINARIES:
        shutil.copy2(BIN_DIR / b, context / "bin" / b)
    image = f"{IMAGE_REPO}:{IMAGE_TAG}"
    docker("build", "-f", str(ROOT / "Dockerfile"), "--target", "prebuilt",
           "--build-arg", f"RUNTIME_IMAGE={BASE_IMAGE}", "-t", image, str(context))
    log(f"image {image} built in {time.monotonic() - t0:.1f} s")
    proxy_ctx = work / "proxy"
    proxy_ctx.mkdir()
    shutil.copy2(BIN_DIR / "service-proxy", proxy_ctx / "service-proxy")
    docker("build", "-t", PROXY_IMAGE, "-f", "-", str(proxy_ctx),
           input=f"FROM {BASE_IMAGE}\nCOPY service-proxy /usr/local/bin/service-proxy\n")
    image_facts(docker, image)
    return image


def render_chart(docker, image):
    """The chart, rendered as `helm install` would, with this image; and its helm test pod,
    whose curl image is built too."""
    extra = [a for item in os.environ.get("E2E_HELM_SET", "").split() for a in ("--set", item)]
    rendered = subprocess.run(
        [HELM, "template", RELEASE, str(CHART), "-f", str(CHART / "ci/local-scheduler-values.yaml"),
         "--set", f"image.repository={IMAGE_REPO}", "--set", f"image.tag={IMAGE_TAG}", *extra],
        capture_output=True, text=True, check=True).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    tests = [d for d in docs if d["kind"] == "Pod"
             and (d["metadata"].get("annotations") or {}).get("helm.sh/hook") == "test"]
    check(tests, "no helm test pod rendered")
    test_image = tests[0]["spec"]["containers"][0]["image"]
    base_env = dict(docker.env, DOCKER=DOCKER)
    subprocess.run([str(ROOT / ".ci/image/offline-base"), "--with-curl", test_image], env=base_env, check=True)
    return docs, tests[0]


class System:
    """The chart's pods on the engine, and where the gateway's Service answers."""

    def __init__(self, docker, cluster):
        self.docker = docker
        self.cluster = cluster
        scheduler = self.pods_of("local-scheduler")
        check(len(scheduler) == 1, "one local scheduler")
        self.sched_name, self.sched_spec, self.sched_labels = scheduler[0]
        self.gw_host = self.gw_port = self.base = None

    def pods_of(self, component):
        d = self.cluster.deployment(component)
        tpl = d["spec"]["template"]
        return [(f"{d['metadata']['name']}-{i}", tpl["spec"], tpl["metadata"]["labels"])
                for i in range(d["spec"].get("replicas", 1))]

    def start_all(self):
        """The pods, all at once (they wait for each other through their probes), then the
        Services."""
        everything = [(self.sched_name, self.sched_spec, self.sched_labels)] + self.pods_of("worker") \
            + self.pods_of("gateway") + self.pods_of("dashboard")
        for name, spec, labels in everything:
            self.cluster.run_pod(name, spec, labels, wait=False)
        self.cluster.services()
        for name, _, _ in everything:
            self.cluster.wait_ready(name)
        gw_svc = next(s for s in self.cluster.of_kind("Service") if s["metadata"]["name"].endswith("-gateway"))
        self.gw_host = self.cluster.ip(gw_svc["metadata"]["name"])
        self.gw_port = gw_svc["spec"]["ports"][0]["port"]
        self.base = f"http://{self.gw_host}:{self.gw_port}"


def a_misconfigured_scheduler_exits_naming_the_key(system):
    """The store moved off the volume, under the read-only root: the scheduler exits, naming
    the key and the path."""
    cluster = system.cluster
    bad = cluster.run_pod(f"{system.sched_name}-misconfigured", system.sched_spec, system.sched_labels,
                          env_override={"LOCAL_SCHEDULER__SQLITE_PATH": "/var/lib/local-scheduler.db"},
                          wait=False)
    for _ in range(100):
        if not cluster.state(bad)["Running"]:
            break
        time.sleep(0.1)
    st = cluster.state(bad)
    check(not st["Running"] and st["ExitCode"] != 0,
          f"the scheduler ran with its store outside the volume: {st}")
    bad_log = cluster.logs(bad)
    check("`sqlite_path`: cannot open /var/lib/local-scheduler.db" in bad_log,
          f"the misconfigured scheduler's error does not name the key and the path:\n{bad_log[-2000:]}")
    log(f"store outside the volume: exited {st['ExitCode']}: {bad_log.strip().splitlines()[-1][:200]}")
    system.docker("rm", "-f", bad)
    cluster.pods.pop(bad)


def smoke_through_the_gateway_service(system):
    subprocess.run([str(ROOT / ".ci/smoke"), system.base], check=True)
    log("smoke through the gateway's Service: ok")


def the_helm_test_pod_passes(system, t):
    """The chart's helm test pod, as rendered."""
    cluster = system.cluster
    name = cluster.run_pod(t["metadata"]["name"], t["spec"], t["metadata"].get("labels", {}), wait=False)
    deadline = time.monotonic() + 120
    while cluster.state(name)["Running"]:
        check(time.monotonic() < deadline, "the helm test pod did not finish in 120 s")
        time.sleep(0.5)
    st = cluster.state(name)
    check(st["ExitCode"] == 0, f"helm test pod failed ({st['ExitCode']}):\n{cluster.logs(name)}")
    log(f"helm test pod: exit 0: {cluster.logs(name).strip().splitlines()[-1][:160]}")


def a_killed_worker_leaves_its_operations_to_the_other(system):
    """A worker SIGKILLed mid-operation: its operations complete on the other one."""
    cluster, base = system.cluster, system.base
    workers = [n for n, _, _ in system.pods_of("worker")]
    check(len(workers) >= 2, "two workers")
    ops = [start(base, f"kill-{i}", 6) for i in range(6)]
    # The scheduler hands the work to either worker: the victim is one that holds some.
    deadline = time.monotonic() + 20
    while True:
        holding = [w for w in workers if '"kill-' in cluster.logs(w)]
        if holding:
            victim = holding[0]
            break
        check(time.monotonic() < deadline, "no worker took an operation")
        time.sleep(0.2)
    system.docker("kill", "--signal", "KILL", victim)
    taken = set(re.findall(r'"name":"(kill-\d+)"', cluster.logs(victim))) | \
        set(re.findall(r'name=(kill-\d+)', cluster.logs(victim)))
    for op in ops:
        doc = wait_done(base, op, 120)
        check(doc["status"] == "Succeeded", f"{op} after the worker was killed: {doc}")
    log(f"worker {victim} SIGKILLed holding {sorted(taken)}: all {len(ops)} operations succeeded")
    system.docker("rm", "-f", victim)
    spec, labels = cluster.pods.pop(victim)
    cluster.run_pod(victim, spec, labels)


def a_scheduler_restart_loses_nothing(system):
    """The scheduler replaced on its volume: the finished operation is kept, the running one
    completes."""
    cluster, base, docker = system.cluster, system.base, system.docker
    before = start(base, "before-restart", 0)
    wait_done(base, before)
    during = start(base, "across-restart", 8)
    time.sleep(1)
    t0 = time.monotonic()
    docker("stop", system.sched_name)
    docker("rm", system.sched_name)
    cluster.pods.pop(system.sched_name)
    cluster.run_pod(system.sched_name, system.sched_spec, system.sched_labels)
    log(f"scheduler replaced on its volume in {time.monotonic() - t0:.1f} s")
    doc = wait_done(base, during, 120)
    check(doc["status"] == "Succeeded", f"the operation across the restart: {doc}")
    code, _, text = http("GET", f"{base}/api/status/{before}")
    check(code == 200 and json.loads(text)["status"] == "Succeeded",
          f"the operation finished before the restart: {code} {text}")
    log("scheduler restart: the finished operation is kept, the running one completed")


def memory_stays_under_the_limits_under_load(system):
    """A short load; every container's peak memory against its limit."""
    cluster, base = system.cluster, system.base
    ids, refused, seconds = load(system.gw_host, system.gw_port, LOAD)
    log(f"load: {len(ids)} starts accepted in {seconds:.1f} s ({len(ids) / seconds:.0f}/s), "
        f"refused with Retry-After and retried: {refused or 'none'}")
    deadline = time.monotonic() + 300
    for op in ids[-50:]:
        doc = wait_done(base, op, max(10, deadline - time.monotonic()))
        check(doc["status"] == "Succeeded", f"{op}: {doc}")
    report = []
    for name, (spec, _) in sorted(cluster.pods.items()):
        limits = spec["containers"][0].get("resources", {}).get("limits", {})
        st = cluster.state(name)
        if name.endswith("-smoke"):
            continue
        check(st["Running"] and not st["OOMKilled"], f"{name}: {st}")
        peak, hwm = peak_memory(system.docker, name)
        limit = memory_bytes(limits["memory"]) if "memory" in limits else None
        report.append((name, peak, hwm, limit))
        check(limit is None or max(peak, hwm) < limit, f"{name}: peak {max(peak, hwm)} reached its limit {limit}")
    for name, peak, hwm, limit in report:
        log(f"peak memory {name}: cgroup {peak / 2**20:.1f} MiB, process RSS {hwm / 2**20:.1f} MiB, "
            f"limit {limit / 2**20:.0f} MiB")


def image_facts(docker, image):
    info = json.loads(docker("image", "inspect", image).stdout)[0]
    cfg = info["Config"]
    log(f"image {image}: {info['Size'] / 1e6:.1f} MB, user {cfg['User']}, entrypoint {cfg['Entrypoint']}")
    check(cfg["User"] == "65532:65532", f"image user {cfg['User']}")
    for line in docker("history", "--format", "{{.Size}}\t{{.CreatedBy}}", image).stdout.splitlines():
        size, _, by = line.partition("\t")
        log(f"  layer {size:>8}  {by[:90]}")


if __name__ == "__main__":
    main()
