#!/usr/bin/env python3
"""The Markdown tables of bench/distribution.sh, from the files it leaves in its results folder.

usage: report.py RESULTS DATE MACHINE
"""
import json
import os
import sys

data, date, machine = sys.argv[1], sys.argv[2], sys.argv[3]
SCENARIOS = [("one", "three regions, one registry", ["east", "west", "north"]),
             ("sep", "three registries", ["sep-east", "sep-west", "sep-north"])]


def lines(name):
    path = os.path.join(data, name)
    return [l.split() for l in open(path)] if os.path.exists(path) else []


versions = []
what = {}
for v, *rest in lines("versions.txt"):
    if v not in what:
        versions.append(v)
        what[v] = " ".join(rest)


def record(s, v):
    path = os.path.join(data, f"{s}-{v}.json")
    return json.load(open(path)) if os.path.exists(path) else None


def sent(s, v):
    """{region: (container bytes, disk bytes)} of a build, and the bytes a region without any
    of it receives (usage's bytesStored)."""
    r = record(s, v)
    out = {}
    for o in r.get("outputs", []):
        c, d = out.get(o["region"], (0, 0))
        if o["kind"] == "oci-registry":
            c += o.get("sent") or 0
        elif o["kind"] == "disk-chunks":
            d += o.get("sent") or 0
        out[o["region"]] = (c, d)
    stored = max((u.get("bytesStored", 0) for u in r.get("usage", {}).get("regions", [])), default=0)
    return out, stored


def mib(n):
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def pct(a, b):
    return f"{100 * a / b:.2f} %" if b else "-"


first = versions[0]
updates = versions[1:]
print(f"### Bytes sent per region for an update ({date})\n")
print(f"`bench/distribution.sh` on {machine}: golden-nginx (Debian bookworm, OCI image and "
      "disk, boot test off) pushed to registry regions as the container image plus the disk as "
      "content-defined chunks, then updated. Shares are of a full first push (every blob of "
      "1.0.0: what a region that has nothing receives).\n")
for v in updates:
    print(f"- {v}: {what[v]}")
print()
head = f"| scenario | region | {first} first push (container + disk) |"
rule = "|---|---|---|"
for v in updates:
    head += f" {v} update (container + disk) | share |"
    rule += "---|---|"
print(head)
print(rule)
checks = []
for s, label, regions in SCENARIOS:
    if record(s, first) is None:
        continue
    f, full = sent(s, first)
    ups = {v: sent(s, v)[0] for v in updates if record(s, v)}
    for r in regions:
        c, d = f.get(r, (0, 0))
        row = f"| {label} | {r} | {mib(c + d)} ({mib(c)} + {mib(d)}) |"
        for v in updates:
            uc, ud = ups.get(v, {}).get(r, (0, 0))
            row += f" {mib(uc + ud)} ({mib(uc)} + {mib(ud)}) | {pct(uc + ud, full)} |"
            checks.append(("per region", s, r, v, (uc + ud) / full))
        print(row)
    tf = sum(sum(x) for x in f.values())
    row = f"| {label} | **total** | {mib(tf)} |"
    for v in updates:
        tu = sum(sum(x) for x in ups.get(v, {}).values())
        row += f" {mib(tu)} | {pct(tu, tf)} |"
        if s == "one":
            checks.append(("total", s, "all", v, tu / tf))
    print(row)
print()

disks = {v: list(map(int, rest)) for v, *rest in lines("disks.txt")}
pulls = {(s, v): (base, int(wrote), " ".join(rest)) for s, v, base, wrote, *rest in lines("pulls.txt")}
print("| version | raw disk (size / allocated) | raw disk, zstd -3 | kiln disk chunks, full (index + packs) | qcow2 (kiln's) | qcow2, qemu-img -c | disk bytes sent per region (first region) | `kiln disk pull` fetched |")
print("|---|---|---|---|---|---|---|---|")
ratio = None
for v in versions:
    if v not in disks:
        continue
    size, alloc, zs, qc, qz = disks[v]
    f, full = sent("one", v)
    d_first = f.get("east", (0, 0))[1]
    if v == first:
        ratio = d_first / zs
    base, wrote, line = pulls.get(("one", v), ("-", 0, ""))
    over = "nothing" if base == "-" else base
    print(f"| {v} | {mib(size)} / {mib(alloc)} | {mib(zs)} | "
          f"{mib(d_first) if v == first else '-'} | {mib(qc)} | {mib(qz)} | {mib(d_first)} | "
          f"{mib(wrote)} over {over} |")
print()
print("Shipping the whole qcow2 to every region, per version (Tart, KubeVirt containerDisks): "
      + ", ".join(f"{v}: {mib(disks[v][3])} (compressed {mib(disks[v][4])}) per region, "
                  f"{mib(3 * disks[v][3])} for three" for v in versions if v in disks) + ".\n")

print("Targets:\n")
worst = max((c for c in checks if c[0] == "per region"), key=lambda c: c[4], default=None)
if worst:
    ok = worst[4] <= 0.05
    print(f"- at most 5 % per region for an update: {'met' if ok else 'NOT met'} (largest "
          f"{100 * worst[4]:.2f} %, {worst[2]} {worst[3]})")
tot = [c for c in checks if c[0] == "total"]
if tot:
    w = max(tot, key=lambda c: c[4])
    print(f"- at most 5 % in total for three regions in one registry: "
          f"{'met' if w[4] <= 0.05 else 'NOT met'} (largest {100 * w[4]:.2f} %, {w[3]})")
if ratio is not None:
    print(f"- first push of the disk at most 15 % larger than the raw disk with zstd -3: "
          f"{'met' if ratio <= 1.15 else 'NOT met'} ({100 * (ratio - 1):+.1f} %)")
print()
print("Registry blob stores (sum of blob sizes) after each version:\n")
for s, v, reg, n in lines("stores.txt"):
    print(f"- {s} {v} {reg}: {mib(int(n))}")
print()
print("`kiln disk pull` (its own summary; fetched counted by kiln, the registry log's bytes above):\n")
for (s, v), (base, wrote, line) in sorted(pulls.items()):
    print(f"- {s} {v} over {base}: registry wrote {wrote} B; kiln: {line}")
