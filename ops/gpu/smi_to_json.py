#!/usr/bin/python3
"""smi_to_json: `nvidia-smi -q -x` (XML on stdin) as JSON on stdout: "raw" is the whole document
(element -> dict, repeated elements -> list, text -> string) and "gpus" picks, per GPU, the fields
the agent's inventory also reports (UUID, name, memory, PCI bus id, NUMA node, ECC and retired
pages), so run.sh can cross-check the agent's NVML reading against the driver's own tool. Field
paths follow nvidia-smi's DTD; one that a driver leaves out comes out as null."""
import json
import sys
import xml.etree.ElementTree as ET


def to_obj(e):
    kids = list(e)
    if not kids:
        return (e.text or "").strip()
    d = {}
    for k in kids:
        v = to_obj(k)
        if k.tag in d:
            d[k.tag] = d[k.tag] if isinstance(d[k.tag], list) else [d[k.tag]]
            d[k.tag].append(v)
        else:
            d[k.tag] = v
    return d


def get(d, path):
    for p in path.split("/"):
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def main():
    root = ET.fromstring(sys.stdin.read())
    raw = to_obj(root)
    gpus = raw.get("gpu", [])
    gpus = gpus if isinstance(gpus, list) else [gpus]
    out = {"driver_version": raw.get("driver_version"), "cuda_version": raw.get("cuda_version"),
           "gpus": [{
               "uuid": get(g, "uuid"), "name": get(g, "product_name"),
               "memory_total": get(g, "fb_memory_usage/total"),
               "pci_bus_id": get(g, "pci/pci_bus_id"), "numa_node": get(g, "numa_id"),
               "ecc_mode": get(g, "ecc_mode/current_ecc"),
               "ecc_uncorrected_volatile": get(g, "ecc_errors/volatile/dram_uncorrectable")
               or get(g, "ecc_errors/volatile/double_bit/total"),
               "retired_pages": get(g, "retired_pages"),
               "remapped_rows": get(g, "remapped_rows"),
           } for g in gpus],
           "raw": raw}
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
