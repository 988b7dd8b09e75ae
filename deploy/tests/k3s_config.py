#!/usr/bin/env python3
"""Check the k3s configuration against the manifests, run the install scripts into a scratch
root, and import the air-gap bundles into a real containerd the way k3s does at first boot.

    k3s_config.py [--images out/images]

- agent config: every gateway DaemonSet's node selector is one of the labels the agent sets
  (so a fresh gateway gets them), the taint is the one the DaemonSets tolerate, the kubelet's
  cluster DNS is smarter-dns's address and equals the server's;
- server config: flannel off, CoreDNS off, cluster CIDR = smarter-cni's subnet;
- install-gateway.sh / install-server.sh: write the right files with the right modes, a second
  run changes nothing, bad arguments are refused;
- air-gap: each bundle imports into containerd (ctr, in a throwaway namespace that is removed
  afterwards) and yields every gateway image under the name the manifests use.
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
K3S = ROOT / "deploy" / "k3s"
MANIFESTS = ROOT / "deploy" / "kubernetes"
VERSION = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"]["version"]
CLUSTER_DNS = "169.254.0.2"  # smarter-dns's address, the original contract
CNI_SUBNET = "172.39.0.0/16"  # smarter-cni's default subnet, the original contract
GATEWAY_IMAGES = ["smarter-device-manager", "smarter-cni", "smarter-dns", "smarter-debug-agent", "smarter-update"]
CONTAINERD_SOCKETS = ["/run/containerd/containerd.sock", "/var/run/docker/containerd/containerd.sock"]

passed = failed = skipped = 0


def result(ok: bool, what: str, detail: str = "") -> None:
    global passed, failed
    if ok:
        passed += 1
        print(f"PASS  {what}")
    else:
        failed += 1
        print(f"FAIL  {what}: {detail}")


def skip(what: str, why: str) -> None:
    global skipped
    skipped += 1
    print(f"SKIP  {what}: {why}")


def gateway_selectors() -> list[tuple[str, str, list[dict]]]:
    out = []
    for path in sorted((MANIFESTS / "gateway").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "DaemonSet":
                spec = doc["spec"]["template"]["spec"]
                for k, v in spec["nodeSelector"].items():
                    out.append((doc["metadata"]["name"], f"{k}={v}", spec.get("tolerations", [])))
    return out


def check_configs() -> None:
    agent = yaml.safe_load((K3S / "agent" / "config.yaml").read_text())
    server = yaml.safe_load((K3S / "server" / "config.yaml").read_text())
    labels = set(agent["node-label"])
    for name, label, tolerations in gateway_selectors():
        if name == "smarter-debug-agent":
            # Opt-in: the label is offered commented out (install-gateway.sh --debug).
            text = (K3S / "agent" / "config.yaml").read_text()
            result(f"# - {label}" in text, f"agent config offers {label} for {name}")
        else:
            result(label in labels, f"agent config sets {label} for {name}", f"labels: {sorted(labels)}")
        for taint in agent["node-taint"]:
            key, rest = taint.split("=", 1)
            value, effect = rest.split(":")
            want = {"key": key, "operator": "Equal", "value": value, "effect": effect}
            result(want in tolerations, f"{name} tolerates taint {taint}")
    for label in ["smarter.type=edge", "smarter.nodetype=unknown", "smarter.nodemodel=unknown",
                  "smarter-build=user-installed"]:
        result(label in labels, f"agent config keeps the original label {label}")
    result(f"cluster-dns={CLUSTER_DNS}" in agent["kubelet-arg"], f"agent kubelet cluster-dns={CLUSTER_DNS}")
    result(server.get("cluster-dns") == CLUSTER_DNS, "server cluster-dns equals the agent's")
    result(server.get("flannel-backend") == "none", "server flannel-backend=none")
    result({"coredns", "traefik"} <= set(server.get("disable", [])), "server disables coredns and traefik")
    result(server.get("cluster-cidr") == CNI_SUBNET, f"server cluster-cidr is smarter-cni's {CNI_SUBNET}")
    result(agent["server"].startswith("https://") and agent["token-file"].startswith("/etc/rancher/k3s/"),
           "agent config has a server URL and a token file")


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=120)


def check_install_scripts(images: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="smarter-k3s-") as tmp:
        tmp = Path(tmp)
        token = tmp / "node-token"
        token.write_text("K10test::server:secret\n")
        airgap = tmp / "airgap"
        airgap.mkdir()
        bundle = images / "airgap" / "smarter-images-arm64.tar"
        if bundle.exists():
            shutil.copy(bundle, airgap / bundle.name)
        else:
            (airgap / bundle.name).write_bytes(b"placeholder")
        root = tmp / "root"
        args = [str(K3S / "install-gateway.sh"), "--server", "https://cloud.test:6443", "--token-file", str(token),
                "--images", str(airgap), "--arch", "arm64", "--root", str(root), "--device-rules", "rpi4",
                "--model", "rpi4", "--debug"]
        first = run(*args)
        result(first.returncode == 0, "install-gateway.sh runs", first.stdout + first.stderr)
        cfg_path = root / "etc/rancher/k3s/config.yaml"
        if cfg_path.exists():
            cfg = yaml.safe_load(cfg_path.read_text())
            result(cfg["server"] == "https://cloud.test:6443", "install-gateway.sh sets the server URL")
            result({"smarter-device-manager=rpi4", "smarter.nodemodel=rpi4", "smarter.debug=enabled"}
                   <= set(cfg["node-label"]), "install-gateway.sh sets board, model and debug labels",
                   str(cfg["node-label"]))
            mode = stat.S_IMODE(os.stat(root / "etc/rancher/k3s/smarter-token").st_mode)
            result(mode == 0o600, "token file is 0600", oct(mode))
            placed = root / "var/lib/rancher/k3s/agent/images" / bundle.name
            result(placed.exists() and placed.read_bytes() == (airgap / bundle.name).read_bytes(),
                   "air-gap bundle placed in /var/lib/rancher/k3s/agent/images")
        second = run(*args)
        result(second.returncode == 0 and "wrote" not in second.stdout,
               "install-gateway.sh second run changes nothing", second.stdout + second.stderr)
        bad = run(str(K3S / "install-gateway.sh"), "--server", "http://plain", "--token-file", str(token),
                  "--root", str(root))
        result(bad.returncode != 0, "install-gateway.sh refuses a non-https server")
        missing = run(str(K3S / "install-gateway.sh"), "--server", "https://x:6443", "--token-file",
                      str(tmp / "nope"), "--root", str(root))
        result(missing.returncode != 0, "install-gateway.sh refuses a missing token file")

        sroot = tmp / "server"
        srv = run(str(K3S / "install-server.sh"), "--tls-san", "cloud.test", "--comms", "--root", str(sroot))
        result(srv.returncode == 0, "install-server.sh runs", srv.stdout + srv.stderr)
        scfg = sroot / "etc/rancher/k3s/config.yaml"
        if scfg.exists():
            result(yaml.safe_load(scfg.read_text())["tls-san"] == ["cloud.test"], "install-server.sh sets tls-san")
        auto = sorted(p.name for p in (sroot / "var/lib/rancher/k3s/server/manifests").glob("smarter-*.yaml"))
        result(len(auto) == 9 and "smarter-30-comms.yaml" in auto, "install-server.sh places every manifest",
               str(auto))


def check_airgap_import(images: Path) -> None:
    ctr = shutil.which("ctr")
    sock = next((s for s in CONTAINERD_SOCKETS if Path(s).exists()), None)
    if ctr is None or sock is None:
        skip("air-gap import", "no ctr or containerd socket on this machine")
        return
    if os.geteuid() != 0:
        skip("air-gap import", "needs root for the containerd socket")
        return
    for bundle in sorted((images / "airgap").glob("smarter-images-*.tar")):
        ns = f"smarter-airgap-test-{os.getpid()}"
        base = [ctr, "--address", sock, "--namespace", ns]
        try:
            imp = run(*base, "images", "import", "--all-platforms", str(bundle))
            refs = run(*base, "images", "ls", "-q").stdout.split()
            want = [f"ghcr.io/smarter-project/{i}:{VERSION}" for i in GATEWAY_IMAGES]
            missing = [w for w in want if w not in refs]
            result(imp.returncode == 0 and not missing, f"containerd imports {bundle.name} with every gateway image",
                   f"{imp.stdout}{imp.stderr} missing={missing}")
        finally:
            for ref in run(*base, "images", "ls", "-q").stdout.split():
                run(*base, "images", "rm", "--sync", ref)
            run(ctr, "--address", sock, "namespaces", "rm", ns)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", default=str(ROOT / "out" / "images"))
    args = ap.parse_args()
    images = Path(args.images)
    check_configs()
    check_install_scripts(images)
    check_airgap_import(images)
    print(f"k3s: {passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
