#!/usr/bin/env python3
"""A hearth GPU worker: keeps safetensors models resident on one GPU and runs
jobs with them, speaking the agent's JSON-lines worker protocol (version 1).

The protocol is documented in the Go package agent/runner (doc.go); the Go
reference worker (agent/runner/refworker) is the behaviour this file copies,
message for message and error text for error text, with "hearth_worker:" in
place of "refworker:".

    {"event":"hello","protocol":1,"name":"hearth-python","pid":4242}
    -> {"id":1,"op":"load","models":[{"name","digest","path","size"}]}
    <- {"id":1,"ok":true,"loaded":["sha256:..."],"load_s":1.42,"resident_bytes":...}
    -> {"id":2,"op":"run","job_id":"j-01","kind":"worker","input":{...},
        "models":["sha256:..."],"output_dir":"..."}
    <- {"id":2,"event":"progress","value":1,"max":8,"node":"matvec"}
    <- {"id":2,"ok":true,"outputs":["hearth_result.json"]}
    -> {"id":3,"op":"cancel","target":2}   <- {"id":3,"ok":true}
    -> {"id":4,"op":"unload","digests":["sha256:..."]}   <- {"id":4,"ok":true}

A run does real work with the weights: for every tensor of every model it
multiplies the tensor (as a matrix, rows by the rest) with a vector drawn from
a seeded generator and adds the result up into a checksum. It reports
progress as it goes, stops between steps when cancelled, and writes
hearth_result.json (checksum, device, load and compute timings) into
output_dir, so a benchmark can tell a cold job from a warm one.

Backends (--backend):
  torch  tensors live on the GPU the agent assigned (it sets
         CUDA_VISIBLE_DEVICES to the slot's GPU, so that GPU is cuda:0 here).
  fake   pure Python: parses the safetensors header itself, holds the bytes
         in host memory as its pretend VRAM and hashes them on a run. For
         tests and hosts without a GPU; it says so on stderr.
  auto   torch when it imports and CUDA is available, else a clear failure
         (ask for fake explicitly: a GPU host silently faking would accept
         jobs it cannot run).

The agent also sets HEARTH_SLOT ("gpu/slot"). It tracks the slot's VRAM
capacity itself and unloads before a load that would not fit; --max-bytes
adds a check on the worker's side.

Standard library only, besides torch and safetensors for the torch backend;
they are imported lazily, so this module imports anywhere.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

PROTOCOL_VERSION = 1
MAX_LINE = 16 << 20  # the protocol's line limit, both directions
ERR_CANCELLED = "cancelled"
OUTPUT_NAME = "hearth_result.json"
PREFIX = "hearth_worker: "

# safetensors: 8-byte little-endian header length, a JSON header, raw bytes.
# A header over this size is taken for a file that is not safetensors at all
# (the safetensors library refuses such headers too).
MAX_HEADER = 100 << 20
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8,
}


class WorkerError(Exception):
    """A failure whose text is the answer's "error", as the user will read it."""


class Cancelled(Exception):
    """The request was cancelled; answered with the protocol's "cancelled"."""


# ---------------------------------------------------------------- safetensors


@dataclass
class TensorInfo:
    name: str
    dtype: str
    shape: list[int]
    begin: int  # offsets relative to the start of the data section
    end: int


@dataclass
class SafetensorsFile:
    path: str
    data_start: int  # file offset of the data section
    data_len: int
    tensors: list[TensorInfo]  # in file order
    metadata: dict[str, str] = field(default_factory=dict)


def read_safetensors_header(path: str, label: str) -> SafetensorsFile:
    """Parse and check a safetensors header without reading the data.

    Every failure names the file and what is wrong with it, because a model
    that is not safetensors (a pickled .ckpt, a truncated download) must be
    refused before a backend trips over it with a less helpful message.
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise WorkerError(f"{PREFIX}model {label}: file {path} is {size} bytes, too short for a safetensors header; only safetensors models are supported")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or n > size - 8:
                raise WorkerError(f"{PREFIX}model {label}: file {path} is not a safetensors file: its header length {n} is larger than {'the file' if n > size - 8 else 'the 100 MiB limit'}; only safetensors models are supported")
            raw = f.read(n)
    except OSError as e:
        raise WorkerError(f"{PREFIX}model {label}: {e.strerror or e}: {path}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WorkerError(f"{PREFIX}model {label}: file {path} is not a safetensors file: its header is not JSON ({e}); only safetensors models are supported") from None
    if not isinstance(header, dict):
        raise WorkerError(f"{PREFIX}model {label}: file {path} is not a safetensors file: its header is not a JSON object")
    data_start, data_len = 8 + n, size - 8 - n
    meta = header.pop("__metadata__", None) or {}
    tensors = []
    for name, t in header.items():
        bad = lambda why: WorkerError(f"{PREFIX}model {label}: file {path}: tensor {name!r} {why}")  # noqa: E731
        if not isinstance(t, dict):
            raise bad("is not described by an object")
        dtype, shape, offs = t.get("dtype"), t.get("shape"), t.get("data_offsets")
        if dtype not in DTYPE_SIZES:
            raise bad(f"has dtype {dtype!r}, which this worker does not know")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise bad(f"has shape {shape!r}; want a list of non-negative integers")
        if not (isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) for o in offs) and 0 <= offs[0] <= offs[1]):
            raise bad(f"has data_offsets {offs!r}; want [begin, end]")
        count = 1
        for d in shape:
            count *= d
        if offs[1] - offs[0] != count * DTYPE_SIZES[dtype]:
            raise bad(f"spans {offs[1] - offs[0]} bytes, but {dtype} {shape} needs {count * DTYPE_SIZES[dtype]}")
        if offs[1] > data_len:
            raise bad(f"ends at byte {offs[1]} of the data, which has only {data_len}: the file is truncated")
        tensors.append(TensorInfo(name, dtype, list(shape), offs[0], offs[1]))
    tensors.sort(key=lambda t: t.begin)
    return SafetensorsFile(path, data_start, data_len, tensors, meta if isinstance(meta, dict) else {})


def write_safetensors(path: str, tensors: list[tuple[str, str, list[int], bytes]]) -> None:
    """Write a safetensors file from (name, dtype, shape, raw bytes) entries.

    Used by the tests and the benchmark's small cases; the header is padded
    with spaces to 8 bytes, as the safetensors library pads it.
    """
    header: dict[str, Any] = {}
    off = 0
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for _, _, _, data in tensors:
            f.write(data)


def valid_digest(d: Any) -> Optional[str]:
    """Return why d is not a well-formed digest, or None (proto.ParseDigest's rules)."""
    if not isinstance(d, str) or not d.startswith("sha256:"):
        return f"digest {json.dumps(d)} must start with \"sha256:\""
    h = d[len("sha256:"):]
    if len(h) != 64:
        return f"digest {json.dumps(d)} must have 64 hex digits after \"sha256:\""
    if any(c not in "0123456789abcdef" for c in h):
        return f"digest {json.dumps(d)} must be lowercase hex"
    return None


# ------------------------------------------------------------------- backends


@dataclass
class Model:
    """A load request's model entry."""
    name: str
    digest: str
    path: str
    size: int

    @property
    def label(self) -> str:
        return json.dumps(self.name)


@dataclass
class Resident:
    """A model a backend holds: handle is the backend's own (bytes or tensors)."""
    model: Model
    handle: Any
    nbytes: int
    tensors: int
    load_s: float
    runs: int = 0  # runs since it was loaded: 0 means the next run is its first (cold)


class Backend:
    """What a worker needs from a compute backend.

    load must raise Cancelled when cancel is set between its steps and
    WorkerError for anything the user can act on.
    """

    name = "?"

    def device_name(self) -> str:
        raise NotImplementedError

    def load(self, m: Model, st: SafetensorsFile, verify: str, cancel: threading.Event) -> tuple[Any, int]:
        """Make m resident; return (handle, bytes held)."""
        raise NotImplementedError

    def free(self, handle: Any) -> None:
        raise NotImplementedError

    def after_free(self) -> None:
        """Return freed memory to the device (PyTorch keeps a cache)."""

    def compute(self, handles: list[Any], seed: int, steps: int, passes: int,
                step: Callable[[int, int], None]) -> str:
        """Run over the tensors of handles; call step(value, max) after each
        step (it raises Cancelled to stop); return the checksum as text."""
        raise NotImplementedError


def _check_verified(m: Model, st_path: str, got_size: int, hasher: Optional[Any]) -> None:
    """The file must be the bytes named: a worker must never compute with others."""
    if m.size > 0 and got_size != m.size:
        raise WorkerError(f"{PREFIX}model {m.label}: file {st_path} is {got_size} bytes, want {m.size}")
    if hasher is not None:
        got = "sha256:" + hasher.hexdigest()
        if got != m.digest:
            raise WorkerError(f"{PREFIX}model {m.label}: file {st_path} has digest {got}, want {m.digest}; refusing to load it")


def _read_file(m: Model, path: str, verify: str, cancel: threading.Event,
               sink: Optional[Callable[[memoryview], None]] = None, chunk: int = 8 << 20) -> int:
    """Stream a file through the digest check and sink, checking cancel per chunk."""
    h = hashlib.sha256() if verify == "sha256" else None
    total = 0
    buf = bytearray(chunk)
    view = memoryview(buf)
    try:
        with open(path, "rb", buffering=0) as f:
            while True:
                if cancel.is_set():
                    raise Cancelled()
                n = f.readinto(buf)
                if not n:
                    break
                if h is not None:
                    h.update(view[:n])
                if sink is not None:
                    sink(view[:n])
                total += n
    except OSError as e:
        raise WorkerError(f"{PREFIX}model {m.label}: read {path}: {e.strerror or e}") from None
    _check_verified(m, path, total, h)
    return total


class FakeBackend(Backend):
    """Holds each model's bytes in host memory and hashes them on a run.

    The documented double for hosts without a GPU: the protocol, residency,
    cancel and error paths are all real, only the device is pretend.
    """

    name = "fake"

    def __init__(self, step_delay: float = 0.0):
        self.step_delay = step_delay

    def device_name(self) -> str:
        return "fake (host memory; no GPU)"

    def load(self, m, st, verify, cancel):
        data = bytearray()
        _read_file(m, st.path, verify, cancel, sink=data.extend)
        # Keep only the data section: the pretend VRAM holds tensors, not headers.
        tensors = [(t, bytes(data[st.data_start + t.begin:st.data_start + t.end])) for t in st.tensors]
        return tensors, sum(len(b) for _, b in tensors)

    def free(self, handle):
        handle.clear()

    def compute(self, handles, seed, steps, passes, step):
        tensors = [t for h in handles for t in h]
        groups = _split(tensors, steps)
        total = len(groups) * passes
        h = hashlib.sha256(seed.to_bytes(8, "little"))
        i = 0
        for _ in range(passes):
            for g in groups:
                if self.step_delay > 0:
                    time.sleep(self.step_delay)
                for info, data in g:
                    h.update(info.name.encode())
                    h.update(data)
                i += 1
                step(i, total)
        return "sha256:" + h.hexdigest()


class TorchBackend(Backend):
    """Tensors resident on one CUDA device, loaded with safetensors or through
    pinned staging buffers (--loader), and a matrix-vector pass per run."""

    name = "torch"

    def __init__(self, device: str, loader: str):
        import torch  # lazy: the module and the fake backend work without it

        self.torch = torch
        if not torch.cuda.is_available():
            raise WorkerError(f"{PREFIX}torch {torch.__version__} imports but CUDA is not available "
                              f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); "
                              "check the driver, or run with --backend fake on a host without a GPU")
        self.device = torch.device(device)
        torch.cuda.set_device(self.device)
        self.loader = loader
        if loader == "safetensors":
            import safetensors.torch  # noqa: F401  fail at start, not at the first load

        self.dtypes = {
            "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16,
            "I32": torch.int32, "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16,
            "F32": torch.float32, "F64": torch.float64,
            "F8_E4M3": getattr(torch, "float8_e4m3fn", None), "F8_E5M2": getattr(torch, "float8_e5m2", None),
            "U16": getattr(torch, "uint16", None), "U32": getattr(torch, "uint32", None),
            "U64": getattr(torch, "uint64", None),
        }

    def device_name(self) -> str:
        return self.torch.cuda.get_device_name(self.device)

    def load(self, m, st, verify, cancel):
        for t in st.tensors:
            if self.dtypes.get(t.dtype) is None:
                raise WorkerError(f"{PREFIX}model {m.label}: tensor {t.name!r} has dtype {t.dtype}, which torch {self.torch.__version__} cannot hold")
        if self.loader == "pinned":
            tensors = self._load_pinned(m, st, verify, cancel)
        else:
            if verify == "sha256":
                _read_file(m, st.path, verify, cancel)  # the check reads the file; safetensors then reads it from the page cache
            elif m.size > 0 and os.path.getsize(st.path) != m.size:
                _check_verified(m, st.path, os.path.getsize(st.path), None)
            if cancel.is_set():
                raise Cancelled()
            import safetensors.torch

            loaded = safetensors.torch.load_file(st.path, device=str(self.device))
            tensors = [(t, loaded[t.name]) for t in st.tensors]
        self.torch.cuda.synchronize(self.device)
        return tensors, sum(x.numel() * x.element_size() for _, x in tensors)

    def _load_pinned(self, m, st, verify, cancel, chunk: int = 64 << 20):
        """Read the data section into two pinned buffers in turn and copy each
        to one device allocation on a side stream while the next is read, so
        the disk (or page cache) read and the PCIe copy overlap."""
        torch = self.torch
        dev = torch.empty(st.data_len, dtype=torch.uint8, device=self.device)
        bufs = [torch.empty(chunk, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
        views = [memoryview((ctypes.c_ubyte * chunk).from_address(b.data_ptr())).cast("B") for b in bufs]
        done = [torch.cuda.Event(), torch.cuda.Event()]
        stream = torch.cuda.Stream(self.device)
        h = hashlib.sha256() if verify == "sha256" else None
        total, pos, k = 0, 0, 0
        try:
            with open(st.path, "rb", buffering=0) as f:
                head = f.read(st.data_start)  # the header, for the digest
                total += len(head)
                if h is not None:
                    h.update(head)
                while pos < st.data_len:
                    if cancel.is_set():
                        raise Cancelled()
                    done[k].synchronize()  # the copy out of this buffer has finished
                    n = f.readinto(views[k][:min(chunk, st.data_len - pos)])
                    if not n:
                        break
                    if h is not None:
                        h.update(views[k][:n])
                    with torch.cuda.stream(stream):
                        dev[pos:pos + n].copy_(bufs[k][:n], non_blocking=True)
                        done[k].record(stream)
                    pos += n
                    total += n
                    k ^= 1
                total += len(f.read(1))  # anything past the data makes the size check fail
        except OSError as e:
            raise WorkerError(f"{PREFIX}model {m.label}: read {st.path}: {e.strerror or e}") from None
        finally:
            stream.synchronize()
        _check_verified(m, st.path, total, h)
        out = []
        for t in st.tensors:
            dt = self.dtypes[t.dtype]
            if t.end == t.begin:
                out.append((t, torch.empty(t.shape, dtype=dt, device=self.device)))
                continue
            piece = dev[t.begin:t.end]
            if t.begin % DTYPE_SIZES[t.dtype]:
                piece = piece.clone()  # view(dtype) needs an offset aligned to the element size
            out.append((t, piece.view(dt).reshape(t.shape)))
        return out

    def free(self, handle):
        handle.clear()  # drops the last references; the caching allocator still holds the memory

    def after_free(self):
        import gc

        gc.collect()
        self.torch.cuda.empty_cache()

    def compute(self, handles, seed, steps, passes, step):
        torch = self.torch
        tensors = [x for h in handles for _, x in h if x.numel() > 0]
        groups = _split(tensors, steps)
        total = len(groups) * passes
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed)
        acc = torch.zeros((), dtype=torch.float64, device=self.device)
        i = 0
        for _ in range(passes):
            for g in groups:
                for x in g:
                    acc += self._matvec(x, gen)
                torch.cuda.synchronize(self.device)  # a step has ended when the GPU says so
                i += 1
                step(i, total)
        return repr(float(acc.item()))

    def _matvec(self, x, gen):
        """Sum of x (rows by the rest) times a seeded vector, in float64."""
        torch = self.torch
        if not x.is_floating_point() or x.element_size() == 1:
            x = x.to(torch.float32)  # integers, bools and fp8 have no matrix-vector kernel
        m = x.reshape(x.shape[0], -1) if x.dim() >= 2 else x.reshape(1, -1)
        v = torch.randn(m.shape[1], generator=gen, device=self.device, dtype=torch.float32).to(m.dtype)
        return torch.mv(m, v).double().sum()


def _split(items: list, steps: int) -> list[list]:
    """Split items into at most steps groups of near-equal length (one group at least)."""
    if not items:
        return [[]]
    n = min(steps, len(items))
    q, r = divmod(len(items), n)
    out, i = [], 0
    for k in range(n):
        j = i + q + (1 if k < r else 0)
        out.append(items[i:j])
        i = j
    return out


def make_backend(args: argparse.Namespace) -> Backend:
    """Pick the backend --backend names; auto never falls back to fake."""
    if args.backend == "fake":
        return FakeBackend(args.step_delay)
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise WorkerError(f"{PREFIX}--backend {args.backend}: torch does not import ({e}); "
                          "install torch and safetensors, or run with --backend fake on a host without a GPU") from None
    try:
        return TorchBackend(args.device, args.loader)
    except ImportError as e:
        raise WorkerError(f"{PREFIX}--backend {args.backend}: {e}; the torch backend needs torch and safetensors") from None


# --------------------------------------------------------------------- worker


class Worker:
    """The state of one worker process. Loads and runs execute on their own
    threads so the input loop keeps reading and sees a cancel while they
    work; unload and cancel are answered in order, on the loop."""

    def __init__(self, backend: Backend, out, log, steps: int, verify: str, max_bytes: int):
        self.backend = backend
        self.out = out
        self.log = log
        self.steps = steps
        self.verify = verify
        self.max_bytes = max_bytes
        self.out_lock = threading.Lock()
        self.lock = threading.Lock()  # guards models and inflight
        self.models: dict[str, Resident] = {}
        self.inflight: dict[Any, threading.Event] = {}
        self.threads: list[threading.Thread] = []
        self.stopping = threading.Event()  # end of input: everything in flight is cancelled

    def write(self, msg: dict) -> None:
        """Send one message line; lines from concurrent requests never mix."""
        line = json.dumps(msg, ensure_ascii=False, separators=(",", ":")) + "\n"
        with self.out_lock:
            try:
                self.out.write(line)
                self.out.flush()
            except (OSError, ValueError) as e:
                self.log(f"write to agent: {e}")

    def resident_bytes(self) -> int:
        with self.lock:
            return sum(r.nbytes for r in self.models.values())

    # The input loop.

    def serve(self, stdin) -> None:
        """Read requests until end of input, then cancel what still runs and
        wait for it, so every request sent before the end gets its answer."""
        while True:
            line = stdin.readline(MAX_LINE + 2)
            if not line:
                break
            if len(line) > MAX_LINE + 1:  # MAX_LINE bytes and the "\n" fit; anything more does not
                while line and not line.endswith(b"\n"):  # drop the rest of the long line
                    line = stdin.readline(1 << 20)
                self.log("request line longer than 16 MiB; dropped")
                continue
            if line.strip():
                self.handle(line)
        self.stopping.set()
        with self.lock:
            for ev in self.inflight.values():
                ev.set()
            threads = list(self.threads)
        for t in threads:
            t.join()

    def handle(self, line: bytes) -> None:
        try:
            req = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            self.log(f"request is not JSON; ignored: {e}")
            return
        if not isinstance(req, dict):
            self.log("request is not a JSON object; ignored")
            return
        rid, op = req.get("id", 0), req.get("op")
        if op == "cancel":
            with self.lock:
                ev = self.inflight.get(req.get("target"))
            if ev is not None:
                ev.set()
            self.write({"id": rid, "ok": True})
        elif op == "unload":
            self.write(self.guard(rid, "unload", lambda: self.unload(req)))
        elif op in ("load", "run"):
            cancel = threading.Event()
            with self.lock:
                self.inflight[rid] = cancel
                self.threads = [t for t in self.threads if t.is_alive()]
                t = threading.Thread(target=self._serve_one, args=(req, op, cancel), name=f"{op}-{rid}", daemon=True)
                self.threads.append(t)
            t.start()
        else:
            self.write({"id": rid, "ok": False, "error": f"{PREFIX}unknown op {json.dumps(op)}; this worker knows load, unload, run and cancel"})

    def _serve_one(self, req: dict, op: str, cancel: threading.Event) -> None:
        rid = req.get("id", 0)
        try:
            fn = self.load if op == "load" else self.run
            self.write(self.guard(rid, op, lambda: fn(req, cancel)))
        finally:
            with self.lock:
                self.inflight.pop(rid, None)

    def guard(self, rid, op: str, fn: Callable[[], dict]) -> dict:
        """Answer a failure the request did not foresee instead of dying with it."""
        try:
            return fn()
        except Exception as e:  # noqa: BLE001  a bug or a CUDA error must fail the request, not the worker
            self.log(f"{op} {rid}: {type(e).__name__}: {e}")
            return {"id": rid, "ok": False, "error": f"{PREFIX}{op}: {type(e).__name__}: {e}"}

    # Requests.

    def load(self, req: dict, cancel: threading.Event) -> dict:
        """Load each model not yet held. Stop at the first failure; the answer's
        loaded list then says which did load."""
        start = time.monotonic()
        resp: dict[str, Any] = {"id": req.get("id", 0), "ok": False, "loaded": [], "load_s": 0.0}

        def fail(err: str) -> dict:
            resp["error"] = err
            resp["load_s"] = time.monotonic() - start
            resp["resident_bytes"] = self.resident_bytes()
            return resp

        try:
            models = parse_models(req.get("models"))
        except WorkerError as e:
            return fail(str(e))
        for m in models:
            with self.lock:
                held = m.digest in self.models
            if not held:
                if why := valid_digest(m.digest):
                    return fail(f"{PREFIX}model {m.label}: {why}")
                try:
                    st = read_safetensors_header(m.path, m.label)
                    if self.max_bytes > 0 and self.resident_bytes() + st.data_len > self.max_bytes:
                        raise WorkerError(f"{PREFIX}model {m.label} needs {st.data_len} bytes beside the {self.resident_bytes()} held, over this worker's --max-bytes {self.max_bytes}; unload models first")
                    t0 = time.monotonic()
                    handle, nbytes = self.backend.load(m, st, self.verify, cancel)
                except Cancelled:
                    self.backend.after_free()
                    return fail(ERR_CANCELLED)
                except WorkerError as e:
                    self.backend.after_free()
                    return fail(ERR_CANCELLED if cancel.is_set() else str(e))
                except Exception as e:  # noqa: BLE001  CUDA out of memory and the like: still say what did load
                    self.backend.after_free()
                    return fail(f"{PREFIX}model {m.label}: load: {type(e).__name__}: {e}")
                took = time.monotonic() - t0
                with self.lock:
                    self.models[m.digest] = Resident(m, handle, nbytes, len(st.tensors), took)
                self.log(f"model loaded: name={m.name} digest={m.digest[7:19]} bytes={nbytes} tensors={len(st.tensors)} "
                         f"load_s={took:.3f} gb_s={nbytes / 1e9 / max(took, 1e-9):.2f} resident_bytes={self.resident_bytes()}")
            resp["loaded"].append(m.digest)
        resp["ok"] = True
        resp["load_s"] = time.monotonic() - start
        resp["resident_bytes"] = self.resident_bytes()
        return resp

    def unload(self, req: dict) -> dict:
        """Free the named models; unknown digests are fine."""
        digests = req.get("digests") or []
        if not isinstance(digests, list):
            return {"id": req.get("id", 0), "ok": False, "error": f"{PREFIX}unload wants digests as a list"}
        freed = []
        with self.lock:
            for d in digests:
                r = self.models.pop(d, None) if isinstance(d, str) else None
                if r is not None:
                    freed.append(r)
        for r in freed:
            self.backend.free(r.handle)
            r.handle = None
            self.log(f"model unloaded: digest={r.model.digest[7:19]} bytes={r.nbytes}")
        if freed:
            self.backend.after_free()  # the memory must be free before the answer
        return {"id": req.get("id", 0), "ok": True}

    def run(self, req: dict, cancel: threading.Event) -> dict:
        """Check the run's models are held, compute over them with progress,
        and write hearth_result.json."""
        rid = req.get("id", 0)
        digests = req.get("models") or []
        if not isinstance(digests, list) or not all(isinstance(d, str) for d in digests):
            return {"id": rid, "ok": False, "error": f"{PREFIX}run wants models as a list of digests"}
        out_dir = req.get("output_dir") or ""
        if not out_dir:
            return {"id": rid, "ok": False, "error": f"{PREFIX}run needs an output_dir"}
        with self.lock:
            for d in digests:
                if d not in self.models:
                    return {"id": rid, "ok": False, "error": f"{PREFIX}model {d} is not loaded; load it before a run that uses it"}
            used = [self.models[d] for d in digests]
        inp = req.get("input")
        params = inp if isinstance(inp, dict) else {}
        seed = params.get("seed")
        if not isinstance(seed, int) or isinstance(seed, bool):
            seed = fingerprint(inp, digests)
        passes = params.get("passes", 1)
        if not isinstance(passes, int) or isinstance(passes, bool) or not 1 <= passes <= 10000:
            return {"id": rid, "ok": False, "error": f"{PREFIX}input.passes must be an integer from 1 to 10000, not {json.dumps(passes)}"}

        node = "matvec" if self.backend.name == "torch" else "checksum"

        def step(value: int, maximum: int) -> None:
            self.write({"id": rid, "event": "progress", "value": value, "max": maximum, "node": node})
            if cancel.is_set():
                raise Cancelled()

        if cancel.is_set():
            return {"id": rid, "ok": False, "error": ERR_CANCELLED}
        cold = [r.model.digest for r in used if r.runs == 0]
        t0 = time.monotonic()
        try:
            checksum = self.backend.compute([r.handle for r in used], seed, self.steps, passes, step)
        except Cancelled:
            self.log(f"run cancelled: job={req.get('job_id')}")
            return {"id": rid, "ok": False, "error": ERR_CANCELLED}
        compute_s = time.monotonic() - t0
        for r in used:
            r.runs += 1
        result = {
            "job_id": req.get("job_id"),
            "kind": req.get("kind"),
            "backend": self.backend.name,
            "device": self.backend.device_name(),
            "slot": os.environ.get("HEARTH_SLOT", ""),
            "seed": seed,
            "passes": passes,
            "checksum": checksum,
            "models": [{"name": r.model.name, "digest": r.model.digest, "bytes": r.nbytes, "tensors": r.tensors,
                        "load_s": r.load_s, "first_run": r.model.digest in cold} for r in used],
            # cold: some model was loaded for this job; its load_s is the
            # load's cost, which the warm repeat does not pay.
            "timings": {"load_s": sum(r.load_s for r in used if r.model.digest in cold), "compute_s": compute_s,
                        "cold": bool(cold)},
            "resident_bytes": self.resident_bytes(),
        }
        try:
            with open(os.path.join(out_dir, OUTPUT_NAME), "w", encoding="utf-8") as f:
                json.dump(result, f, indent=2)
                f.write("\n")
        except OSError as e:
            return {"id": rid, "ok": False, "error": f"{PREFIX}write output: {e.strerror or e}: {os.path.join(out_dir, OUTPUT_NAME)}"}
        self.log(f"run finished: job={req.get('job_id')} cold={bool(cold)} compute_s={compute_s:.3f} output={OUTPUT_NAME}")
        return {"id": rid, "ok": True, "outputs": [OUTPUT_NAME]}


def parse_models(raw: Any) -> list[Model]:
    """A load request's models, as [{name, digest, path, size}]."""
    want = f"{PREFIX}load wants models as [{{name, digest, path, size}}]"
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise WorkerError(f"{want}, not {type(raw).__name__}")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise WorkerError(f"{want}: entry {i} is not an object")
        name, digest, path, size = m.get("name", ""), m.get("digest", ""), m.get("path", ""), m.get("size", 0)
        if not isinstance(name, str) or not isinstance(path, str) or not isinstance(size, int) or isinstance(size, bool):
            raise WorkerError(f"{want}: entry {i} has a field of the wrong type")
        if not path:
            raise WorkerError(f"{PREFIX}model {json.dumps(name)} has no path")
        out.append(Model(name, digest, path, size))
    return out


def fingerprint(inp: Any, digests: list[str]) -> int:
    """A seed derived from the job's input and its models, as the refworker
    derives its image: sha256 over the input, then each digest in order."""
    h = hashlib.sha256(json.dumps(inp, sort_keys=True, separators=(",", ":")).encode())
    for d in digests:
        h.update(d.encode())
    return int.from_bytes(h.digest()[:8], "little") >> 1  # torch seeds are below 2**63


def main(argv: Optional[list[str]] = None) -> int:
    """Run the worker until stdin ends. Exit 0 after a clean end of input,
    1 when the backend cannot start, 2 for bad flags."""
    p = argparse.ArgumentParser(prog="hearth_worker.py", description="hearth GPU worker (JSON-lines protocol 1)")
    p.add_argument("--backend", choices=["torch", "fake", "auto"], default="auto",
                   help="torch: tensors on the GPU; fake: pure Python, no GPU; auto: torch, or fail (default)")
    p.add_argument("--device", default="cuda:0",
                   help="torch device (default cuda:0: the agent's CUDA_VISIBLE_DEVICES makes the slot's GPU the only one)")
    p.add_argument("--loader", choices=["safetensors", "pinned"], default="safetensors",
                   help="torch: safetensors.torch.load_file onto the device, or a read through pinned buffers (default safetensors)")
    p.add_argument("--verify", choices=["sha256", "size"], default="sha256",
                   help="check each model file against its digest while loading (default), or only its size: the agent has verified the blob already")
    p.add_argument("--steps", type=int, default=8, help="progress steps per pass of a run (default 8)")
    p.add_argument("--step-delay", type=float, default=0.0, help="fake backend: seconds to pause in each step")
    p.add_argument("--max-bytes", type=int, default=0, help="refuse loads that would hold more than this (0: no limit)")
    p.add_argument("--name", default="hearth-python", help="name announced in the hello")
    args = p.parse_args(argv)
    if args.steps < 1 or args.step_delay < 0 or args.max_bytes < 0:
        p.error("--steps must be at least 1, --step-delay and --max-bytes not negative")

    # The real stdout carries the protocol; anything else that prints (torch,
    # safetensors, C libraries writing to fd 1) goes to stderr instead.
    proto_out = os.fdopen(os.dup(1), "w", encoding="utf-8", newline="\n")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def log(msg: str) -> None:
        print(f"hearth_worker: {msg}", file=sys.stderr, flush=True)

    try:
        backend = make_backend(args)
    except WorkerError as e:
        print(str(e), file=sys.stderr, flush=True)
        return 1
    log(f"backend={backend.name} device={backend.device_name()!r} "
        f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')} "
        f"HEARTH_SLOT={os.environ.get('HEARTH_SLOT', '<unset>')} verify={args.verify}"
        + (f" loader={args.loader}" if backend.name == "torch" else " (a stand-in: nothing runs on a GPU)"))
    w = Worker(backend, proto_out, log, args.steps, args.verify, args.max_bytes)
    w.write({"event": "hello", "protocol": PROTOCOL_VERSION, "name": args.name, "pid": os.getpid()})
    w.serve(sys.stdin.buffer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
