"""ADD+DEL cycle times: smarter-cni vs reference bridge + host-local.

Run through run.sh. Drives each plugin exactly as a runtime does: CNI_*
environment, network config on stdin.
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

OURS, CYCLES = sys.argv[1], int(sys.argv[2])
REF_DIR = "/usr/lib/cni"
PARALLEL = 20
work = tempfile.mkdtemp(prefix="cni-bench-")
namespaces = []
# DNS records go to /run/smarter/cni/records in production, a tmpfs; /tmp
# here may be a disk, where the record's fsync would cost a disk flush that
# no gateway pays. IPAM state stays on disk for both plugins, as in
# production (/var/lib).
RUN = os.path.join(work, "run")
os.mkdir(RUN)
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", RUN], check=True)


def sh(*args):
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def netns(name):
    sh("ip", "netns", "add", name)
    namespaces.append(name)
    return f"/var/run/netns/{name}"


def call(binary, cmd, conf, cid, ns):
    env = {
        "PATH": os.environ["PATH"],
        "CNI_COMMAND": cmd,
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": ns,
        "CNI_IFNAME": "eth0",
        "CNI_PATH": REF_DIR,
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=" + cid,
    }
    p = subprocess.run([binary], input=json.dumps(conf).encode(), env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if p.returncode != 0:
        raise SystemExit(f"{binary} {cmd} failed: {p.stdout!r} {p.stderr!r}")


def conf(kind, n):
    common = {"cniVersion": "1.0.0", "name": f"bench{kind}", "bridge": f"cbench{kind}",
              "isGateway": True, "isDefaultGateway": True, "ipMasq": True, "hairpinMode": True}
    ipam = {"subnet": f"10.{210 + n}.0.0/16", "dataDir": f"{work}/{kind}"}
    if kind == "ours":
        return dict(common, type="smarter-cni", ipam=ipam, recordsDir=f"{RUN}/records")
    return dict(common, type="bridge", ipam=dict(ipam, type="host-local"))


def cycles(binary, c, tag):
    ns = netns(f"cb{tag}")
    times = []
    for i in range(CYCLES + 3):
        t = time.perf_counter()
        call(binary, "ADD", c, f"{tag}{i}", ns)
        call(binary, "DEL", c, f"{tag}{i}", ns)
        if i >= 3:  # warm-up: bridge creation and first rules
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def parallel(binary, c, tag):
    nss = [netns(f"cp{tag}{i}") for i in range(PARALLEL)]
    t = time.perf_counter()
    with ThreadPoolExecutor(PARALLEL) as ex:
        list(ex.map(lambda i: call(binary, "ADD", c, f"p{tag}{i}", nss[i]), range(PARALLEL)))
    wall = time.perf_counter() - t
    with ThreadPoolExecutor(PARALLEL) as ex:
        list(ex.map(lambda i: call(binary, "DEL", c, f"p{tag}{i}", nss[i]), range(PARALLEL)))
    return wall


def main():
    ours, ref = conf("ours", 0), conf("ref", 1)
    ref_bin = os.path.join(REF_DIR, "bridge")
    try:
        o = cycles(OURS, ours, "o")
        r = cycles(ref_bin, ref, "r")
        po = parallel(OURS, ours, "o")
        pr = parallel(ref_bin, ref, "r")
    finally:
        for n in namespaces:
            subprocess.run(["ip", "netns", "del", n], stderr=subprocess.DEVNULL)
        for b in ("cbenchours", "cbenchref"):
            subprocess.run(["ip", "link", "del", b], stderr=subprocess.DEVNULL)
        for fam in ("ip", "bridge"):
            subprocess.run(["nft", "delete", "table", fam, "smarter-cni-benchours"],
                           stderr=subprocess.DEVNULL)
        for rule in (["-i", "cbenchours", "-m", "comment", "--comment", "smarter-cni", "-j", "ACCEPT"],
                     ["-o", "cbenchours", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED",
                      "-m", "comment", "--comment", "smarter-cni", "-j", "ACCEPT"]):
            subprocess.run(["iptables", "-w", "-D", "FORWARD"] + rule, stderr=subprocess.DEVNULL)
        subprocess.run(["umount", RUN], stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)
    print(f"ADD+DEL median over {CYCLES} cycles: smarter-cni {o*1000:.1f} ms, "
          f"bridge+host-local {r*1000:.1f} ms, ratio {r/o:.2f}x")
    print(f"{PARALLEL} parallel ADDs, wall: smarter-cni {po*1000:.1f} ms, "
          f"bridge+host-local {pr*1000:.1f} ms, ratio {pr/po:.2f}x")


main()
