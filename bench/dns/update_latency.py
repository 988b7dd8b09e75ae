#!/usr/bin/env python3
"""Record-to-resolvable latency: write a record atomically (temp + rename, as
smarter-cni does), then query over UDP every 0.2 ms until the name answers;
then remove it and query until NXDOMAIN. Prints median and p99 of each."""
import os
import random
import socket
import struct
import sys
import time

records, server, count = sys.argv[1], sys.argv[2], int(sys.argv[3])


def query(sock, name):
    qid = random.randrange(65536)
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\x00" + struct.pack(">HH", 1, 1)
    sock.sendto(q, (server, 53))
    while True:
        data = sock.recv(4096)
        if struct.unpack(">H", data[:2])[0] == qid:
            rcode = data[3] & 0x0F
            ancount = struct.unpack(">H", data[6:8])[0]
            return rcode, ancount


def wait(sock, name, want_answer):
    start = time.perf_counter()
    while True:
        rcode, an = query(sock, name)
        if (an > 0) == want_answer:
            return time.perf_counter() - start
        if time.perf_counter() - start > 5:
            raise SystemExit(f"{name}: no change within 5 s")
        time.sleep(0.0002)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] * 1000


sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(2)
add, rem = [], []
for i in range(count):
    name = f"lat-{i}"
    rec = ('{"version":1,"container_id":"lat%d","ifname":"eth0","network":"smartnet",'
           '"pod_name":"%s","namespace":"default","ips":["172.40.%d.%d"]}') % (i, name, i // 250, i % 250 + 2)
    path = os.path.join(records, f"lat{i}_eth0.json")
    tmp = os.path.join(records, f".lat{i}.tmp")
    with open(tmp, "w") as f:
        f.write(rec)
    os.rename(tmp, path)
    add.append(wait(sock, name, True))
    os.unlink(path)
    rem.append(wait(sock, name, False))
print(f"{'added -> resolvable':22} median {pct(add, 0.5):.2f} ms  p99 {pct(add, 0.99):.2f} ms  (n={count})")
print(f"{'removed -> NXDOMAIN':22} median {pct(rem, 0.5):.2f} ms  p99 {pct(rem, 0.99):.2f} ms  (n={count})")
target = "met" if pct(add, 0.99) < 50 and pct(rem, 0.99) < 50 else "MISSED"
print(f"target p99 < 50 ms: {target}")
