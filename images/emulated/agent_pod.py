"""The OS update agent's pod, run on the emulated gateway the way the kubelet runs it.

The emulated gateway has Docker, not k3s: the agent's DaemonSet (deploy/kubernetes/update/
agent.yaml) becomes one `docker run` with what the pod spec says, read from the manifest itself
so the test cannot drift from what is deployed: the image and args, host network, the user and
group, every capability dropped (and any the manifest adds), a read-only root, no new
privileges, the memory and CPU limits, and each volume: a hostPath mounted from the same path on
the gateway (created first for DirectoryOrCreate, as the kubelet does), a ConfigMap written to
files on the gateway's data partition and mounted read-only. `--restart always` stands in for
the kubelet restarting the pod, after a crash and after a reboot.

The ConfigMaps' contents are the manifest's, with the test's overrides (shorter intervals, a
reboot window) and its own desired bundle.
"""

from __future__ import annotations

import shlex
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "tests"))
from run_images import load_pod, quantity_bytes, quantity_cpus  # noqa: E402 (the path above)

WORKLOAD = "smarter-update"
NAME = "smarter-update"
# Where the ConfigMaps' files live on the gateway: the data partition, so that the container
# finds its mounts again after a reboot, as a pod's projected ConfigMaps come back.
CONFIGMAP_DIR = "/data/smarter-test/configmaps"


def toml_line(key: str, value) -> str:
    if isinstance(value, bool):
        return f"{key} = {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"{key} = {value}"
    return f"{key} = {json_str(str(value))}"


def json_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def docker_run(desired: dict, overrides: dict) -> str:
    """Shell commands (for the gateway's root shell) that (re)create the agent's container with
    `desired` as the desired bundle and the manifest's agent config with `overrides` applied."""
    pod = load_pod(WORKLOAD)
    spec, c = pod.spec, pod.container
    pod_sc = spec.get("securityContext", {})
    sc = c.get("securityContext", {})
    uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
    gid = sc.get("runAsGroup", pod_sc.get("runAsGroup", uid))
    flags = ["--detach", "--name", NAME, "--restart", "always", "--user", f"{uid}:{gid}"]
    if spec.get("hostNetwork"):
        flags += ["--network", "host"]
    if sc.get("privileged"):
        raise SystemExit(f"{WORKLOAD}: the manifest asks for a privileged container; it must not")
    caps = sc.get("capabilities", {})
    if caps.get("drop") == ["ALL"]:
        flags += ["--cap-drop", "ALL"]
    for cap in caps.get("add", []):
        flags += ["--cap-add", cap]
    if sc.get("readOnlyRootFilesystem"):
        flags.append("--read-only")
    if sc.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    limits = c.get("resources", {}).get("limits", {})
    if "memory" in limits:
        mem = str(quantity_bytes(limits["memory"]))
        flags += ["--memory", mem, "--memory-swap", mem]
    if "cpu" in limits:
        flags += ["--cpus", quantity_cpus(str(limits["cpu"]))]

    setup = [f"docker rm -f {NAME} >/dev/null 2>&1 || true"]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for m in c.get("volumeMounts", []):
        vol = volumes[m["name"]]
        ro = ":ro" if m.get("readOnly") else ""
        if "hostPath" in vol:
            path = vol["hostPath"]["path"]
            if vol["hostPath"].get("type") == "DirectoryOrCreate":
                setup.append(f"mkdir -p {shlex.quote(path)}")
            flags += ["-v", f"{path}:{m['mountPath']}{ro}"]
        elif "configMap" in vol:
            cm = vol["configMap"]["name"]
            data = dict(pod.configmaps[cm])
            if "desired.toml" in data:
                data["desired.toml"] = "".join(toml_line(k, v) + "\n" for k, v in desired.items())
            if "update-agent.toml" in data:
                cfg = tomllib.loads(data["update-agent.toml"])
                cfg.update(overrides)
                data["update-agent.toml"] = "".join(toml_line(k, v) + "\n" for k, v in cfg.items())
            d = f"{CONFIGMAP_DIR}/{m['name']}"
            setup.append(f"rm -rf {d} && mkdir -p {d}")
            for key, text in data.items():
                setup.append(f"printf %s {shlex.quote(text)} > {d}/{key}")
            flags += ["-v", f"{d}:{m['mountPath']}{ro}"]
        else:
            raise SystemExit(f"{WORKLOAD}: volume type of {m['name']} not handled by the test")
    run = ["docker", "run", *flags, c["image"], *c.get("args", [])]
    return " && ".join(setup + [" ".join(shlex.quote(a) for a in run)])
