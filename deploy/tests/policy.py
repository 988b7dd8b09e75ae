#!/usr/bin/env python3
"""SMARTER's own policy over the Kubernetes manifests in deploy/kubernetes.

What the OpenAPI schemas cannot say: the original SMARTER contract (node selectors, the edge
toleration, system-node-critical, host network), least privilege (no privileged pod, every
capability dropped except a per-service allowlist, host PID only for the debug agent, read-only root, no
privilege escalation, no service-account token since no service talks to the API), resource
requests and limits on every container, our images pinned to the workspace version and built by
deploy/images/build.py (gateway ones in the air-gap bundle), hostPath
mounts limited to what each service needs, device rules in the original conf.yaml format, the
recommended app.kubernetes.io/* labels on every object and pod template, no obsolete
bootstrap-checkpoint annotation, selectors exactly as released (they are immutable), and readiness
and liveness probes on the loopback port each gateway agent's own config listens on.

    policy.py [--self-test] [MANIFEST_DIR]

--self-test breaks the manifests in memory in ways the policy must catch and fails unless every
break is reported, so the check itself is tested.
"""

from __future__ import annotations

import copy
import re
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "images"))
import build as image_build  # noqa: E402  (the images build.py writes: a manifest may only run those)

BUILT = {s.binary: s for s in image_build.SERVICES}
MANIFESTS = ROOT / "deploy" / "kubernetes"
VERSION = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"]["version"]
IMAGE_REPO = "ghcr.io/smarter-project"
NAMESPACE = "smarter"
EDGE_TOLERATION = {"key": "smarter.type", "operator": "Equal", "value": "edge", "effect": "NoSchedule"}
BOARDS = ("rpi4", "coral", "xavier")

# Per SMARTER workload: the node selector it must have, the image it runs, the capabilities it
# may add, whether it may be privileged, the host paths it may mount, and the key of its TOML
# config that holds the address of its /healthz and /readyz (None: nothing to probe).
GATEWAY = {
    "smarter-device-manager": {
        "selector": ("smarter-device-manager", "enabled"),
        "image": "smarter-device-manager",
        "caps": set(),
        "privileged": False,
        "host_paths": {"/var/lib/kubelet/device-plugins", "/dev", "/sys", "/run/udev"},
        "probe_key": "metrics_address",
    },
    "smarter-cni": {
        "selector": ("smarter.cni", "deploy"),
        "image": "smarter-cni",
        "caps": set(),
        "privileged": False,
        "host_paths": {"/opt/cni/bin", "/etc/cni/net.d", "/run/smarter"},
        # The installer only copies a file and rewrites another; it serves nothing to probe.
        "probe_key": None,
    },
    "smarter-dns": {
        "selector": ("smarter.dns", "enabled"),
        "image": "smarter-dns",
        "caps": {"NET_ADMIN", "NET_BIND_SERVICE"},
        "privileged": False,
        "host_paths": {"/run/smarter/cni/records", "/run/k3s/containerd"},
        "probe_key": "metrics_listen",
    },
    "smarter-debug-agent": {
        "selector": ("smarter.debug", "enabled"),
        "image": "smarter-debug-agent",
        # Serves shells on the host and inside pods' namespaces (services/debug/README.md).
        "caps": {"SYS_ADMIN", "SYS_CHROOT", "SYS_PTRACE", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER",
                 "CHOWN", "KILL", "SETUID", "SETGID", "NET_ADMIN", "NET_RAW", "SYS_RESOURCE"},
        "privileged": False,
        "host_pid": True,
        "host_paths": {"/var/lib/smarter/debug-agent", "/run/k3s/containerd"},
        "probe_key": "metrics_listen",
    },
    # The OS update agent: RAUC and logind over the system bus as root, no capability; its
    # downloads, the health gate's state (read-only) and the D-Bus socket (services/update/README.md).
    "smarter-update": {
        "selector": ("smarter.update/ring", "stable"),
        "image": "smarter-update",
        "caps": set(),
        "privileged": False,
        "host_paths": {"/run/dbus/system_bus_socket", "/data/smarter/update", "/data/smarter/health-gate"},
        "probe_key": "listen",
    },
}
GATEWAY["smarter-update-canary"] = dict(GATEWAY["smarter-update"], selector=("smarter.update/ring", "canary"))
for board in BOARDS:
    GATEWAY[f"smarter-device-manager-{board}"] = dict(
        GATEWAY["smarter-device-manager"], selector=("smarter-device-manager", board)
    )
CLOUD = {"smarter-comms": {"image": "smarter-comms", "caps": set(), "privileged": False, "host_paths": set()}}
RBAC_KINDS = {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding", "ServiceAccount"}
WORKLOAD_KINDS = {"DaemonSet", "Deployment", "StatefulSet", "Pod", "Job", "CronJob"}
DEVICE_RULE_KEYS = {"devicematch", "nummaxdevices"}

# Kubernetes' recommended labels; every object and every pod template carries all of them.
LABEL_KEYS = ("name", "instance", "version", "component", "part-of", "managed-by")
# Removed from the kubelet long ago (static-pod checkpointing); it must not come back.
OBSOLETE_ANNOTATIONS = ("node.kubernetes.io/bootstrap-checkpoint",)
# Selectors as released before the recommended labels were added. A DaemonSet's or Deployment's
# spec.selector is immutable: changing it makes `kubectl apply` (and k3s's auto-deploy) fail on
# every existing cluster. So these values are written down here, not derived from the manifests.
SELECTORS = {
    ("DaemonSet", "smarter-device-manager"): {"matchLabels": {"name": "smarter-device-manager"}},
    ("DaemonSet", "smarter-device-manager-rpi4"): {"matchLabels": {"name": "smarter-device-manager-rpi4"}},
    ("DaemonSet", "smarter-device-manager-coral"): {"matchLabels": {"name": "smarter-device-manager-coral"}},
    ("DaemonSet", "smarter-device-manager-xavier"): {"matchLabels": {"name": "smarter-device-manager-xavier"}},
    ("DaemonSet", "smarter-cni"): {"matchLabels": {"name": "smarter-cni"}},
    ("DaemonSet", "smarter-dns"): {"matchLabels": {"name": "smarter-dns"}},
    ("DaemonSet", "smarter-debug-agent"): {"matchLabels": {"name": "smarter-debug-agent"}},
    ("DaemonSet", "smarter-update"): {"matchLabels": {"name": "smarter-update"}},
    ("DaemonSet", "smarter-update-canary"): {"matchLabels": {"name": "smarter-update-canary"}},
    ("Deployment", "smarter-comms"): {"matchLabels": {"name": "smarter-comms"}},
    ("Service", "smarter-comms"): {"name": "smarter-comms"},
    ("DaemonSet", "camera"): {"matchLabels": {"name": "camera"}},
    ("DaemonSet", "viewer"): {"matchLabels": {"name": "viewer"}},
}


def load(manifest_dir: Path) -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(manifest_dir.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((str(path.relative_to(manifest_dir)), doc))
    return docs


def quantity(q: str | int) -> float:
    """A Kubernetes quantity as a float (enough for comparisons)."""
    s = str(q)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix, mult in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if s.endswith(suffix):
            return float(s[: -len(suffix)]) * mult
    return float(s)


def check(docs: list[tuple[str, dict]]) -> list[str]:
    errors: list[str] = []

    def err(where: str, msg: str) -> None:
        errors.append(f"{where}: {msg}")

    names_seen = set()
    for path, doc in docs:
        kind, meta = doc.get("kind"), doc.get("metadata", {})
        name = meta.get("name")
        where = f"{path} {kind}/{name}"
        errors.extend(f"{where}: {e}" for e in check_labels(path, doc))
        if kind in RBAC_KINDS:
            # No SMARTER service talks to the Kubernetes API; RBAC would be dead weight.
            err(where, "RBAC object present but no service needs the API")
        if kind == "ConfigMap" and "conf.yaml" in doc.get("data", {}):
            errors.extend(f"{where}: {e}" for e in check_device_rules(doc["data"]["conf.yaml"]))
        if kind not in WORKLOAD_KINDS:
            continue
        example = path.startswith("examples/")
        if not example:
            names_seen.add(name)
            if meta.get("namespace") != NAMESPACE:
                err(where, f"must be in namespace {NAMESPACE}")
        spec = doc["spec"]["template"]["spec"]
        expect = GATEWAY.get(name) or CLOUD.get(name)
        if expect is None and not example:
            err(where, "unknown SMARTER workload (add it to the policy)")
            continue
        if spec.get("automountServiceAccountToken") is not False:
            err(where, "automountServiceAccountToken must be false (no service uses the API)")
        tolerations = spec.get("tolerations", [])
        if kind == "DaemonSet" and EDGE_TOLERATION not in tolerations:
            err(where, f"missing toleration {EDGE_TOLERATION}")
        if name in GATEWAY:
            key, value = GATEWAY[name]["selector"]
            if spec.get("nodeSelector") != {key: value}:
                err(where, f"nodeSelector must be {{{key}: {value}}}, is {spec.get('nodeSelector')}")
            if spec.get("priorityClassName") != "system-node-critical":
                err(where, "priorityClassName must be system-node-critical")
            if spec.get("hostNetwork") is not True:
                err(where, "gateway agents run with hostNetwork (they start before the pod network)")
            if kind != "DaemonSet":
                err(where, "gateway agents are DaemonSets")
        if name in CLOUD:
            terms = (
                spec.get("affinity", {}).get("nodeAffinity", {})
                .get("requiredDuringSchedulingIgnoredDuringExecution", {}).get("nodeSelectorTerms", [])
            )
            keeps_off_edge = any(
                e.get("key") == "smarter.type" and e.get("operator") == "NotIn" and "edge" in e.get("values", [])
                for t in terms for e in t.get("matchExpressions", [])
            )
            if not keeps_off_edge or EDGE_TOLERATION in tolerations:
                err(where, "cloud workloads must keep off edge nodes")
        pod_sc = spec.get("securityContext", {})
        host_paths = {v["hostPath"]["path"] for v in spec.get("volumes", []) if "hostPath" in v}
        if expect is not None:
            extra = host_paths - expect["host_paths"]
            if extra:
                err(where, f"hostPath not allowed for this service: {sorted(extra)}")
        elif host_paths:
            err(where, f"example apps get devices from smarter-device-manager, not hostPath: {sorted(host_paths)}")
        if spec.get("hostPID") and not (expect and expect.get("host_pid")):
            err(where, "hostPID only for the debug agent")
        for c in spec.get("initContainers", []) + spec["containers"]:
            cwhere = f"{where} container {c['name']}"
            errors.extend(f"{cwhere}: {e}" for e in check_resources(c.get("resources", {})))
            sc = c.get("securityContext", {})
            privileged = bool(sc.get("privileged"))
            if sc.get("readOnlyRootFilesystem") is not True:
                err(cwhere, "readOnlyRootFilesystem must be true")
            may_be_privileged = bool(expect and expect["privileged"])
            if privileged and not may_be_privileged:
                err(cwhere, "privileged is not allowed for this service")
            if not privileged:
                caps = sc.get("capabilities", {})
                # Kubernetes refuses allowPrivilegeEscalation=false together with SYS_ADMIN.
                if sc.get("allowPrivilegeEscalation") is not False and "SYS_ADMIN" not in caps.get("add", []):
                    err(cwhere, "allowPrivilegeEscalation must be false")
                if caps.get("drop") != ["ALL"]:
                    err(cwhere, "capabilities.drop must be [ALL]")
                allowed = expect["caps"] if expect else set()
                added = set(caps.get("add", []))
                if added - allowed:
                    err(cwhere, f"capabilities not allowed: {sorted(added - allowed)}")
            image = c.get("image", "")
            if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
                err(cwhere, f"image {image!r} must have a pinned tag")
            if expect is not None:
                want = f"{IMAGE_REPO}/{expect['image']}:{VERSION}"
                if image != want:
                    err(cwhere, f"image must be {want} (what deploy/images/build.py produces), is {image}")
                built = BUILT.get(expect["image"])
                if built is None:
                    err(cwhere, f"deploy/images/build.py does not build {expect['image']} (add it to SERVICES)")
                elif name in GATEWAY and not built.gateway:
                    err(cwhere, f"{expect['image']} is not in the gateway air-gap bundle (build.py: gateway=False)")
                if c.get("imagePullPolicy") != "IfNotPresent":
                    err(cwhere, "imagePullPolicy must be IfNotPresent (air-gapped gateways import images)")
            run_as = sc.get("runAsUser", pod_sc.get("runAsUser"))
            if run_as is None:
                err(cwhere, "runAsUser must be explicit")
            elif name in CLOUD and run_as == 0:
                err(cwhere, "cloud services run as non-root")
            elif example and run_as == 0:
                err(cwhere, "example apps run as non-root")

    errors.extend(check_probes(docs))
    for required in list(GATEWAY) + list(CLOUD):
        if required not in names_seen:
            errors.append(f"missing workload {required}")
    errors.extend(check_board_variants(docs))
    return errors


def check_probes(docs: list[tuple[str, dict]]) -> list[str]:
    """Every gateway agent that serves probes has an httpGet readiness (/readyz) and liveness
    (/healthz) probe on 127.0.0.1 at the port its own config (the ConfigMap file its --config
    names) listens on, and that address is loopback: host network, so the kubelet on the host
    reaches it there while nothing listens on the gateway's external interfaces."""
    errors = []
    configmaps = {d["metadata"]["name"]: d.get("data", {}) for _, d in docs if d.get("kind") == "ConfigMap"}
    for path, doc in docs:
        name = doc.get("metadata", {}).get("name")
        if doc.get("kind") != "DaemonSet" or name not in GATEWAY:
            continue
        key = GATEWAY[name]["probe_key"]
        if key is None:
            continue
        where = f"{path} DaemonSet/{name}"
        spec = doc["spec"]["template"]["spec"]
        c = spec["containers"][0]
        config_arg = next((a.split("=", 1)[1] for a in c.get("args", []) if a.startswith("--config=")), None)
        if config_arg is None:
            errors.append(f"{where}: no --config=PATH argument")
            continue
        directory, _, file = config_arg.rpartition("/")
        mount = next((m for m in c.get("volumeMounts", []) if m["mountPath"] == directory), None)
        volume = mount and next((v for v in spec.get("volumes", []) if v["name"] == mount["name"]), None)
        text = volume and configmaps.get(volume.get("configMap", {}).get("name"), {}).get(file)
        if not text:
            errors.append(f"{where}: --config {config_arg} is not a file of a ConfigMap it mounts")
            continue
        try:
            address = str(tomllib.loads(text).get(key, ""))
        except tomllib.TOMLDecodeError as e:
            errors.append(f"{where}: {config_arg} is not TOML: {e}")
            continue
        host, _, port = address.rpartition(":")
        if host != "127.0.0.1" or not port.isdigit():
            errors.append(f"{where}: {key} = {address!r} in {config_arg} must be 127.0.0.1:PORT "
                          "(host network: loopback, where the kubelet's probes reach it)")
            continue
        for probe, want_path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            get = c.get(probe, {}).get("httpGet")
            want = {"host": "127.0.0.1", "path": want_path, "port": int(port)}
            if get is None:
                errors.append(f"{where}: no {probe} (httpGet {want_path})")
            elif {k: get.get(k) for k in want} != want:
                errors.append(f"{where}: {probe} httpGet {get} must be {want} ({key} in {config_arg})")
    return errors


def check_labels(path: str, doc: dict) -> list[str]:
    """Recommended labels on the object and its pod template, no obsolete annotation, selectors
    as released."""
    errors = []
    kind, meta = doc.get("kind"), doc.get("metadata", {})
    part_of = "smarter-demo" if path.startswith("examples/") else "smarter"
    metas = [("metadata", meta)]
    template = doc.get("spec", {}).get("template") if kind in WORKLOAD_KINDS else None
    if template is not None:
        metas.append(("pod template", template.get("metadata", {})))
    for what, m in metas:
        labels = m.get("labels") or {}
        for key in LABEL_KEYS:
            value = labels.get(f"app.kubernetes.io/{key}")
            if not isinstance(value, str) or not value:
                errors.append(f"{what}: label app.kubernetes.io/{key} missing")
        if labels.get("app.kubernetes.io/part-of", part_of) != part_of:
            errors.append(f"{what}: label app.kubernetes.io/part-of must be {part_of}")
        if labels.get("app.kubernetes.io/version", VERSION) != VERSION:
            errors.append(f"{what}: label app.kubernetes.io/version must be {VERSION} (the workspace version)")
        for a in OBSOLETE_ANNOTATIONS:
            if a in (m.get("annotations") or {}):
                errors.append(f"{what}: obsolete annotation {a}")
    if template is not None:
        top = meta.get("labels") or {}
        pod = template.get("metadata", {}).get("labels") or {}
        for key in ("name", "instance", "component", "version"):
            k = f"app.kubernetes.io/{key}"
            if k in top and k in pod and top[k] != pod[k]:
                errors.append(f"pod template label {k}={pod[k]} differs from the object's {top[k]}")
    if kind in ("DaemonSet", "Deployment", "Service"):
        want = SELECTORS.get((kind, meta.get("name")))
        have = doc.get("spec", {}).get("selector")
        if want is None:
            errors.append("no released selector recorded in policy.py SELECTORS (add it; it is immutable)")
        elif have != want:
            errors.append(f"selector {have} differs from the released {want} (immutable)")
        elif template is not None:
            pod = template.get("metadata", {}).get("labels") or {}
            if any(pod.get(k) != v for k, v in want["matchLabels"].items()):
                errors.append("pod template labels do not match the selector")
    return errors


def check_resources(res: dict) -> list[str]:
    errors = []
    for kind in ("cpu", "memory"):
        req = res.get("requests", {}).get(kind)
        lim = res.get("limits", {}).get(kind)
        if req is None or lim is None:
            errors.append(f"{kind} request and limit must both be set")
        elif quantity(req) > quantity(lim):
            errors.append(f"{kind} request {req} exceeds limit {lim}")
    return errors


def check_device_rules(text: str) -> list[str]:
    """The original conf.yaml: a list of {devicematch: regexp, nummaxdevices: uint > 0}."""
    try:
        rules = yaml.safe_load(text)
    except yaml.YAMLError as e:
        return [f"conf.yaml is not YAML: {e}"]
    if not isinstance(rules, list) or not rules:
        return ["conf.yaml must be a non-empty list"]
    errors = []
    seen = set()
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict) or set(rule) != DEVICE_RULE_KEYS:
            errors.append(f"conf.yaml rule {i}: must have exactly {sorted(DEVICE_RULE_KEYS)}")
            continue
        match, users = rule["devicematch"], rule["nummaxdevices"]
        if not isinstance(users, int) or isinstance(users, bool) or users < 1:
            errors.append(f"conf.yaml rule {i} ({match}): nummaxdevices must be a positive integer")
        if not isinstance(match, str):
            errors.append(f"conf.yaml rule {i}: devicematch must be a string")
            continue
        try:
            re.compile(match)
        except re.error as e:
            errors.append(f"conf.yaml rule {i}: devicematch {match!r} is not a regexp: {e}")
        if match in seen:
            errors.append(f"conf.yaml rule {i}: duplicate devicematch {match!r}")
        seen.add(match)
    return errors


def check_board_variants(docs: list[tuple[str, dict]]) -> list[str]:
    """Board DaemonSets must equal the generic one apart from name, selector and ConfigMap."""
    ds = {d["metadata"]["name"]: d for _, d in docs if d.get("kind") == "DaemonSet"}
    base = ds.get("smarter-device-manager")
    errors = []
    if base is None:
        return errors
    for board in BOARDS:
        name = f"smarter-device-manager-{board}"
        if name not in ds:
            errors.append(f"missing board DaemonSet {name}")
            continue
        text = yaml.safe_dump(ds[name], sort_keys=True)
        normalised = text.replace(name, "smarter-device-manager").replace(
            f"smarter-device-manager: {board}", "smarter-device-manager: enabled"
        )
        if yaml.safe_load(normalised) != base:
            errors.append(f"{name} differs from smarter-device-manager beyond name, selector and ConfigMap")
    return errors


# -------------------------------------------------------------------------------------------
# Self-test: each mutation must produce at least one error.


def _workload(docs, name):
    return next(d for _, d in docs if d.get("kind") in WORKLOAD_KINDS and d["metadata"]["name"] == name)


def _container(docs, name):
    return _workload(docs, name)["spec"]["template"]["spec"]["containers"][0]


MUTATIONS = {
    "debug agent privileged": lambda d: _container(d, "smarter-debug-agent")["securityContext"].update(
        privileged=True),
    "cni hostPID": lambda d: _workload(d, "smarter-cni")["spec"]["template"]["spec"].update(hostPID=True),
    "dns privileged": lambda d: _container(d, "smarter-dns")["securityContext"].update(privileged=True),
    "device-manager adds a capability": lambda d: _container(d, "smarter-device-manager")["securityContext"][
        "capabilities"].update(add=["SYS_ADMIN"]),
    "cni without memory limit": lambda d: _container(d, "smarter-cni")["resources"]["limits"].pop("memory"),
    "dns without edge toleration": lambda d: _workload(d, "smarter-dns")["spec"]["template"]["spec"].update(
        tolerations=[]),
    "device-manager wrong selector": lambda d: _workload(d, "smarter-device-manager")["spec"]["template"][
        "spec"].update(nodeSelector={"smarter.device-manager": "enabled"}),
    "cni not node-critical": lambda d: _workload(d, "smarter-cni")["spec"]["template"]["spec"].pop(
        "priorityClassName"),
    "comms as root": lambda d: _workload(d, "smarter-comms")["spec"]["template"]["spec"][
        "securityContext"].update(runAsUser=0),
    "dns writable root": lambda d: _container(d, "smarter-dns")["securityContext"].update(
        readOnlyRootFilesystem=False),
    "image tag latest": lambda d: _container(d, "smarter-dns").update(
        image=f"{IMAGE_REPO}/smarter-dns:latest"),
    "extra hostPath": lambda d: _workload(d, "smarter-dns")["spec"]["template"]["spec"]["volumes"].append(
        {"name": "root", "hostPath": {"path": "/"}}),
    "RBAC without need": lambda d: d.append(("x.yaml", {"kind": "ClusterRole", "metadata": {
        "name": "x", "labels": copy.deepcopy(_workload(d, "smarter-dns")["metadata"]["labels"])}})),
    "bad device rule": lambda d: next(doc for _, doc in d if doc.get("kind") == "ConfigMap"
                                      and doc["metadata"]["name"] == "smarter-device-manager-rpi4")[
        "data"].update({"conf.yaml": "- devicematch: '^video[0-9*$'\n  nummaxdevices: 0\n"}),
    "board variant drifts": lambda d: _container(d, "smarter-device-manager-coral")["resources"][
        "limits"].update(memory="64Mi"),
    "ConfigMap without a recommended label": lambda d: next(
        doc for _, doc in d if doc.get("kind") == "ConfigMap" and doc["metadata"]["name"] == "smarter-dns")[
        "metadata"]["labels"].pop("app.kubernetes.io/component"),
    "pod template without a recommended label": lambda d: _workload(d, "smarter-cni")["spec"]["template"][
        "metadata"]["labels"].pop("app.kubernetes.io/instance"),
    "namespace without labels": lambda d: next(doc for _, doc in d if doc.get("kind") == "Namespace")[
        "metadata"].pop("labels"),
    "stale version label": lambda d: _workload(d, "smarter-dns")["metadata"]["labels"].update(
        {"app.kubernetes.io/version": "0.0.9"}),
    "bootstrap-checkpoint annotation": lambda d: _workload(d, "smarter-device-manager-xavier")["spec"][
        "template"]["metadata"].update(annotations={"node.kubernetes.io/bootstrap-checkpoint": "true"}),
    "selector widened": lambda d: _workload(d, "smarter-dns")["spec"]["selector"]["matchLabels"].update(
        {"app.kubernetes.io/name": "smarter-dns"}),
    "service selector changed": lambda d: next(doc for _, doc in d if doc.get("kind") == "Service")[
        "spec"].update(selector={"app.kubernetes.io/name": "smarter-comms"}),
    "update agent adds a capability": lambda d: _container(d, "smarter-update")["securityContext"][
        "capabilities"].update(add=["SYS_BOOT"]),
    "update canary mounts all of /run/dbus": lambda d: _workload(d, "smarter-update-canary")["spec"]["template"][
        "spec"]["volumes"].append({"name": "run-dbus", "hostPath": {"path": "/run/dbus"}}),
    "update agent image not ours": lambda d: _container(d, "smarter-update").update(
        image=f"{IMAGE_REPO}/smarter-update-agent:{VERSION}"),
    "dns probe port differs from its config": lambda d: _container(d, "smarter-dns")["readinessProbe"][
        "httpGet"].update(port=9999),
    "debug agent without liveness probe": lambda d: _container(d, "smarter-debug-agent").pop("livenessProbe"),
    "device-manager metrics on every address": lambda d: next(
        doc for _, doc in d if doc.get("kind") == "ConfigMap" and doc["metadata"]["name"] == "smarter-device-manager")[
        "data"].update({"device-manager.toml": 'metrics_address = "0.0.0.0:9464"\n'}),
    "missing workload": lambda d: d.remove(next(x for x in d if x[1].get("kind") == "DaemonSet"
                                                and x[1]["metadata"]["name"] == "smarter-debug-agent")),
}


def self_test(docs) -> int:
    failed = 0
    for what, mutate in MUTATIONS.items():
        broken = copy.deepcopy(docs)
        mutate(broken)
        found = check(broken)
        print(f"{'ok' if found else 'MISSED'}: {what}" + (f" -> {found[0]}" if found else ""))
        failed += not found
    print(f"{len(MUTATIONS) - failed} passed, {failed} failed")
    return 1 if failed else 0


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    docs = load(Path(args[0]) if args else MANIFESTS)
    errors = check(docs)
    for e in errors:
        print(f"POLICY: {e}")
    if errors:
        print(f"policy: {len(errors)} violation(s)")
        return 1
    print(f"policy: {len(docs)} objects pass")
    if "--self-test" in sys.argv:
        return self_test(docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
