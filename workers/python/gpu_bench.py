#!/usr/bin/env python3
"""Measure what a cold and a warm job cost on a real GPU host, next to the
baselines that bound them, all in the same run, and print a markdown table.

Needs a CUDA GPU, torch and safetensors; no Go and no hearth binary. It

  1. writes a safetensors model of --size bytes (default 6 GiB) of random
     bf16 matrices into --dir and takes its sha256, as the agent's cache would;
  2. measures the baselines: pinned and pageable host->GPU copies,
     safetensors.torch.load_file(device="cuda") from a warm page cache, and,
     when it may write /proc/sys/vm/drop_caches (root), from a cold cache and
     a plain sequential read of the file;
  3. starts hearth_worker.py --backend torch for each loader variant and
     drives it exactly as the agent's runner does (wait for the hello; load,
     then run, with ids from 1; an empty output_dir per job): a cold job (the
     model on disk, not resident: load + run), then warm jobs (resident: run
     only), and a cold job from a cold cache when it can drop caches.

Usage (on the GPU host, from the repository root):

    python3 workers/python/gpu_bench.py                 # 6 GiB model, GPU 0
    sudo python3 workers/python/gpu_bench.py --size 12GiB --dir /nvme/bench
    CUDA_VISIBLE_DEVICES=3 python3 workers/python/gpu_bench.py --json out.json

Figures are printed, never asserted. The reference column holds figures
measured earlier on the same host class (NVIDIA H200, PCIe Gen5 x16); they are
not this run's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "hearth_worker.py")

# Measured on an NVIDIA H200 host (PCIe Gen5 x16); see docs/gpu.md.
REFERENCE = {
    "pinned": "55.4 GB/s",
    "pageable": "7.7 GB/s",
    "st_warm": "4.9 GB/s",
    "disk": "about 1.5-2 GB/s",
}


def parse_size(s: str) -> int:
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30}
    t = s.strip().upper()
    num = t.rstrip("KMGIB")
    unit = t[len(num):]
    if unit not in units or not num:
        raise argparse.ArgumentTypeError(f"size {s!r}: want a number with B, KB, MB, GB, KiB, MiB or GiB")
    return int(float(num) * units[unit])


def log(msg: str) -> None:
    print(f"gpu_bench: {msg}", file=sys.stderr, flush=True)


def can_drop_caches() -> bool:
    return os.access("/proc/sys/vm/drop_caches", os.W_OK)


def drop_caches() -> None:
    """Empty the page cache, so the next read of the model comes from disk."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def read_file(path: str, chunk: int = 64 << 20) -> int:
    """Read a file once, sequentially (to warm the page cache or time the disk)."""
    n = 0
    buf = bytearray(chunk)
    with open(path, "rb", buffering=0) as f:
        while r := f.readinto(buf):
            n += r
    return n


def make_model(torch, path: str, size: int) -> None:
    """Random bf16 matrices of 8192 columns, 128 MiB each, summing to size."""
    from safetensors.torch import save_file

    cols, rows_full = 8192, 8192
    row_bytes = cols * 2
    tensors, left, i = {}, size, 0
    g = torch.Generator(device="cuda")
    g.manual_seed(1)
    while left >= row_bytes:
        rows = min(rows_full, left // row_bytes)
        tensors[f"blocks.{i}.weight"] = torch.randn(rows, cols, generator=g, device="cuda", dtype=torch.bfloat16).cpu()
        left -= rows * row_bytes
        i += 1
    save_file(tensors, path)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    buf = bytearray(64 << 20)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(memoryview(buf)[:n])
    return "sha256:" + h.hexdigest()


def copy_rate(torch, pinned: bool, nbytes: int = 1 << 30, reps: int = 5) -> float:
    """Host->GPU copy rate in GB/s (median of reps), pinned or pageable."""
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned)
    host.fill_(1)  # touch every page before timing
    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dev.copy_(host)
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        dev.copy_(host, non_blocking=pinned)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    del host, dev
    torch.cuda.empty_cache()
    return nbytes / 1e9 / statistics.median(times)


def load_file_rate(torch, path: str, size: int) -> float:
    from safetensors.torch import load_file

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    t = load_file(path, device="cuda:0")
    torch.cuda.synchronize()
    took = time.perf_counter() - t0
    del t
    torch.cuda.empty_cache()
    return size / 1e9 / took


class Agent:
    """The agent's side of the worker protocol, as agent/runner drives it."""

    def __init__(self, args: list[str], env: dict, stderr=None):
        t0 = time.perf_counter()
        # stderr passes through by default: the worker logs there.
        self.p = subprocess.Popen([sys.executable, WORKER, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=stderr, env=env)
        self.q: queue.Queue = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.next_id = 0
        hello = self._recv(120)
        if hello.get("event") != "hello" or hello.get("protocol") != 1:
            raise SystemExit(f"gpu_bench: the worker's first message is not a protocol 1 hello: {hello}")
        self.start_s = time.perf_counter() - t0

    def _read(self):
        for line in self.p.stdout:
            self.q.put(line)
        self.q.put(None)

    def _recv(self, timeout: float) -> dict:
        line = self.q.get(timeout=timeout)
        if line is None:
            raise SystemExit(f"gpu_bench: the worker exited (status {self.p.wait()}); its stderr is above")
        return json.loads(line)

    def call(self, msg: dict, timeout: float = 600) -> dict:
        self.next_id += 1
        rid = self.next_id
        self.p.stdin.write(json.dumps({"id": rid, **msg}).encode() + b"\n")
        self.p.stdin.flush()
        while True:
            m = self._recv(timeout)
            if m.get("id") == rid and "ok" in m:
                if not m["ok"]:
                    raise SystemExit(f"gpu_bench: the worker refused {msg['op']}: {m.get('error')}")
                return m

    def close(self) -> None:
        self.p.stdin.close()
        self.p.wait(timeout=60)
        self.reader.join(timeout=60)
        self.p.stdout.close()


def worker_job(agent: Agent, model: dict, out_root: str, n: int, cold: bool) -> dict:
    """One job as the agent runs it: load first when the model is not
    resident, then run. Returns wall times and the worker's own timings."""
    out = os.path.join(out_root, f"job-{n}")
    os.mkdir(out)
    t0 = time.perf_counter()
    load_s = None
    if cold:
        load_s = agent.call({"op": "load", "models": [model]})["load_s"]
    agent.call({"op": "run", "job_id": f"bench-{n}", "kind": "worker", "input": {"seed": n},
                "models": [model["digest"]], "output_dir": out})
    wall = time.perf_counter() - t0
    with open(os.path.join(out, "hearth_result.json")) as f:
        result = json.load(f)
    return {"wall_s": wall, "load_s": load_s, "compute_s": result["timings"]["compute_s"], "device": result["device"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=parse_size, default=6 << 30, help="model size (default 6GiB)")
    ap.add_argument("--dir", default="", help="where to write the model (default: a temporary dir; use the NVMe the cache would be on)")
    ap.add_argument("--warm-runs", type=int, default=5, help="warm jobs per worker variant (default 5)")
    ap.add_argument("--loaders", default="safetensors,pinned", help="worker --loader variants to measure (default safetensors,pinned)")
    ap.add_argument("--verify", default="size", choices=["size", "sha256"],
                    help="the worker's --verify (default size: the agent has hashed the blob already)")
    ap.add_argument("--json", default="", help="also write the figures here as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the generated model")
    args = ap.parse_args()

    try:
        import torch
        import safetensors  # noqa: F401
    except ImportError as e:
        raise SystemExit(f"gpu_bench: needs torch and safetensors ({e}); this benchmark runs on a GPU host")
    if not torch.cuda.is_available():
        raise SystemExit("gpu_bench: torch sees no CUDA device; run it on the GPU host (check nvidia-smi and CUDA_VISIBLE_DEVICES)")
    dev_name = torch.cuda.get_device_name(0)
    root = args.dir or tempfile.mkdtemp(prefix="hearth-gpu-bench-")
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, "bench-model.safetensors")
    figures: dict = {"device": dev_name, "torch": torch.__version__, "size": args.size,
                     "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "")}
    if shutil.which("nvidia-smi"):
        gpu = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0]  # torch's cuda:0
        q = subprocess.run(["nvidia-smi", f"--id={gpu}",
                            "--query-gpu=name,memory.total,pcie.link.gen.current,pcie.link.width.current,driver_version",
                            "--format=csv,noheader"], capture_output=True, text=True)
        figures["nvml"] = q.stdout.strip() or q.stderr.strip()
    cold_ok = can_drop_caches()
    try:
        log(f"device {dev_name}; writing a {args.size / 2**30:.1f} GiB model to {path}")
        t0 = time.perf_counter()
        make_model(torch, path, args.size)
        size = os.path.getsize(path)
        log(f"wrote {size} bytes in {time.perf_counter() - t0:.1f}s; hashing it")
        t0 = time.perf_counter()
        digest = sha256_file(path)
        figures["sha256_gb_s"] = size / 1e9 / (time.perf_counter() - t0)
        model = {"name": "checkpoints/bench-model.safetensors", "digest": digest, "path": path, "size": size}

        log("baselines: host->GPU copies")
        figures["pinned_gb_s"] = copy_rate(torch, pinned=True)
        figures["pageable_gb_s"] = copy_rate(torch, pinned=False)
        log("baselines: safetensors.torch.load_file from a warm page cache")
        read_file(path)
        figures["st_warm_gb_s"] = statistics.median(load_file_rate(torch, path, size) for _ in range(3))
        if cold_ok:
            log("baselines: cold cache (dropping the page cache)")
            drop_caches()
            figures["st_cold_gb_s"] = load_file_rate(torch, path, size)
            drop_caches()
            t0 = time.perf_counter()
            read_file(path)
            figures["disk_gb_s"] = size / 1e9 / (time.perf_counter() - t0)
        else:
            log("not root: the cold-cache rows are skipped (run with sudo to measure them)")

        env = dict(os.environ)
        env.setdefault("CUDA_VISIBLE_DEVICES", "0")  # the agent always sets it to the slot's GPU
        env["HEARTH_SLOT"] = env["CUDA_VISIBLE_DEVICES"].split(",")[0] + "/0"
        figures["worker"] = {}
        n = 0
        for loader in [x for x in args.loaders.split(",") if x]:
            log(f"worker --loader {loader} --verify {args.verify}")
            agent = Agent(["--backend", "torch", "--loader", loader, "--verify", args.verify], env)
            res = {"start_s": agent.start_s}
            read_file(path)  # warm page cache: the model is in the disk tier, recently read
            n += 1
            res["cold"] = worker_job(agent, model, root, n, cold=True)
            warm = []
            for _ in range(args.warm_runs):
                n += 1
                warm.append(worker_job(agent, model, root, n, cold=False))
            res["warm_median_s"] = statistics.median(w["wall_s"] for w in warm) if warm else None
            res["warm_compute_median_s"] = statistics.median(w["compute_s"] for w in warm) if warm else None
            if cold_ok:
                agent.call({"op": "unload", "digests": [digest]})
                drop_caches()
                n += 1
                res["cold_disk"] = worker_job(agent, model, root, n, cold=True)
            agent.close()
            figures["worker"][loader] = res
    finally:
        if not args.keep:
            if args.dir:
                for name in os.listdir(root):
                    p = os.path.join(root, name)
                    if name == "bench-model.safetensors":
                        os.remove(p)
                    elif name.startswith("job-"):
                        shutil.rmtree(p, ignore_errors=True)
            else:
                shutil.rmtree(root, ignore_errors=True)

    print_table(figures, cold_ok)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 0


def print_table(f: dict, cold_ok: bool) -> None:
    gb = lambda k: f"{f[k]:.1f} GB/s" if k in f else "not measured (needs root)"  # noqa: E731
    gib = f["size"] / 2**30
    print(f"\n{f['device']}, torch {f['torch']}, model {gib:.1f} GiB" + (f"; nvidia-smi: {f['nvml']}" if f.get("nvml") else ""))
    print("\n| measurement | this run | reference (H200 host class, not this run) |")
    print("|---|---|---|")
    print(f"| pinned host->GPU copy | {gb('pinned_gb_s')} | {REFERENCE['pinned']} |")
    print(f"| pageable host->GPU copy | {gb('pageable_gb_s')} | {REFERENCE['pageable']} |")
    print(f"| safetensors load_file(device=\"cuda\"), warm page cache | {gb('st_warm_gb_s')} | {REFERENCE['st_warm']} |")
    print(f"| safetensors load_file(device=\"cuda\"), cold cache | {gb('st_cold_gb_s')} | - |")
    print(f"| sequential read of the model file, cold cache | {gb('disk_gb_s')} | {REFERENCE['disk']} |")
    print(f"| sha256 of the model file (CPU, warm cache) | {gb('sha256_gb_s')} | - |")
    for loader, r in f.get("worker", {}).items():
        c = r["cold"]
        print(f"| worker ({loader}) cold job, warm page cache: load + run | {c['wall_s']:.3f} s (load {c['load_s']:.3f} s = {f['size'] / 1e9 / c['load_s']:.1f} GB/s) | - |")
        if "cold_disk" in r:
            c = r["cold_disk"]
            print(f"| worker ({loader}) cold job, cold cache: load + run | {c['wall_s']:.3f} s (load {c['load_s']:.3f} s) | - |")
        elif not cold_ok:
            print(f"| worker ({loader}) cold job, cold cache | not measured (needs root) | - |")
        if r.get("warm_median_s") is not None:
            print(f"| worker ({loader}) warm job (resident): run only, median | {r['warm_median_s'] * 1000:.1f} ms (compute {r['warm_compute_median_s'] * 1000:.1f} ms) | - |")
        print(f"| worker ({loader}) start to hello | {r['start_s']:.2f} s | - |")


if __name__ == "__main__":
    sys.exit(main())
