"""Tests of hearth_worker.py with its fake backend, each against a real worker
process over real pipes, driven the way the agent's runner drives a worker:
wait for the hello, send requests with increasing ids, match answers by id.

Run with: python3 -m unittest discover -s workers/python -v
No torch, GPU or Go needed; nothing here asserts a duration.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import struct
import subprocess
import sys
import tempfile
import threading
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import hearth_worker  # noqa: E402

WORKER = os.path.join(HERE, "hearth_worker.py")
# Generous: a loaded CI machine may be slow to start Python, and a wait that
# times out fails the test with a message instead of hanging it.
WAIT_S = 30


def digest_of(path: str) -> str:
    with open(path, "rb") as f:
        return "sha256:" + hashlib.sha256(f.read()).hexdigest()


def write_model(path: str, seed: int = 0) -> tuple[str, int]:
    """Write a small safetensors file by hand (struct + json) and return its
    digest and size: two F32 matrices and an F16 vector of known bytes."""
    def f32(n: int, k: int) -> bytes:
        return struct.pack(f"<{n}f", *[(i * 0.25 + k + seed) % 7 for i in range(n)])

    hearth_worker.write_safetensors(path, [
        ("layer.0.weight", "F32", [4, 8], f32(32, 1)),
        ("layer.1.weight", "F32", [8, 4], f32(32, 2)),
        ("norm.bias", "F16", [8], struct.pack("<8e", *[0.5] * 8)),
    ])
    return digest_of(path), os.path.getsize(path)


class WorkerProc:
    """A worker process and the agent's side of its protocol."""

    def __init__(self, *args: str):
        self.p = subprocess.Popen([sys.executable, WORKER, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        self.lines: queue.Queue = queue.Queue()
        self.stderr: list[bytes] = []
        self.next_id = 0
        self.readers = [threading.Thread(target=self._read, daemon=True),
                        threading.Thread(target=lambda: self.stderr.extend(self.p.stderr), daemon=True)]
        for t in self.readers:
            t.start()
        self.hello = self.recv()

    def _read(self) -> None:
        for line in self.p.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def recv(self) -> dict:
        try:
            line = self.lines.get(timeout=WAIT_S)
        except queue.Empty:
            raise AssertionError(f"no message from the worker within {WAIT_S}s; stderr: {self.stderr_text()}") from None
        if line is None:
            raise AssertionError(f"the worker closed its stdout; stderr: {self.stderr_text()}")
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"the worker wrote a line that is not JSON on stdout: {line!r}") from None

    def send(self, msg: dict) -> int:
        if "id" not in msg:
            self.next_id += 1
            msg = {"id": self.next_id, **msg}
        self.send_raw(json.dumps(msg).encode() + b"\n")
        return msg["id"]

    def send_raw(self, data: bytes) -> None:
        self.p.stdin.write(data)
        self.p.stdin.flush()

    def final(self, rid: int, progress: list | None = None) -> dict:
        """Wait for request rid's final answer, collecting its progress events."""
        while True:
            m = self.recv()
            if m.get("id") == rid and "ok" in m:
                return m
            if m.get("id") == rid and m.get("event") == "progress" and progress is not None:
                progress.append(m)

    def call(self, msg: dict, progress: list | None = None) -> dict:
        return self.final(self.send(msg), progress)

    def close(self) -> int:
        if self.p.stdin and not self.p.stdin.closed:
            self.p.stdin.close()
        try:
            return self.p.wait(timeout=WAIT_S)
        finally:
            if self.p.poll() is None:
                self.p.kill()
                self.p.wait()
            for t in self.readers:  # so stderr_text has everything the worker wrote
                t.join(timeout=WAIT_S)
            self.p.stdout.close()
            self.p.stderr.close()

    def stderr_text(self) -> str:
        return b"".join(self.stderr).decode(errors="replace")


class WorkerTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name
        # Blob paths have no extension in the agent's cache: the worker must
        # recognise safetensors by content, not by name.
        self.model_path = os.path.join(self.dir, "blob-a")
        self.digest, self.size = write_model(self.model_path)
        self.model = {"name": "checkpoints/tiny.safetensors", "digest": self.digest, "path": self.model_path,
                      "size": self.size}

    def tearDown(self):
        self.tmp.cleanup()

    def start(self, *args: str) -> WorkerProc:
        w = WorkerProc("--backend", "fake", *args)
        self.addCleanup(w.close)
        return w

    def out_dir(self, name: str) -> str:
        d = os.path.join(self.dir, name)
        os.mkdir(d)
        return d

    def run_req(self, out: str, **kw) -> dict:
        return {"op": "run", "job_id": "j-01", "kind": "worker", "input": {"prompt": "x"},
                "models": [self.digest], "output_dir": out, **kw}

    def test_hello(self):
        w = self.start("--name", "py-test")
        self.assertEqual(w.hello, {"event": "hello", "protocol": 1, "name": "py-test", "pid": w.p.pid})
        self.assertEqual(w.close(), 0)
        self.assertIn("backend=fake", w.stderr_text())

    def test_load_run_unload(self):
        w = self.start()
        resp = w.call({"op": "load", "models": [self.model]})
        self.assertTrue(resp["ok"], resp)
        self.assertEqual(resp["loaded"], [self.digest])
        self.assertIsInstance(resp["load_s"], float)
        self.assertEqual(resp["resident_bytes"], 32 * 4 * 2 + 8 * 2)  # the tensors, not the header

        again = w.call({"op": "load", "models": [self.model]})  # already resident
        self.assertEqual((again["ok"], again["loaded"]), (True, [self.digest]))

        out = self.out_dir("out1")
        progress: list = []
        resp = w.call(self.run_req(out), progress)
        self.assertEqual(resp, {"id": resp["id"], "ok": True, "outputs": ["hearth_result.json"]})
        self.assertEqual(os.listdir(out), ["hearth_result.json"])
        self.assertTrue(progress, "no progress events")
        self.assertEqual([p["value"] for p in progress], list(range(1, len(progress) + 1)))
        self.assertTrue(all(p["max"] == len(progress) and p["node"] == "checksum" for p in progress), progress)
        with open(os.path.join(out, "hearth_result.json")) as f:
            result = json.load(f)
        self.assertEqual(result["backend"], "fake")
        self.assertTrue(result["checksum"].startswith("sha256:"))
        self.assertTrue(result["timings"]["cold"])
        self.assertEqual(set(result["timings"]), {"load_s", "compute_s", "cold"})
        self.assertEqual(result["models"][0]["digest"], self.digest)
        self.assertEqual(result["models"][0]["tensors"], 3)

        # The repeat is warm, and the same input on the same weights gives the same checksum.
        out2 = self.out_dir("out2")
        self.assertTrue(w.call(self.run_req(out2))["ok"])
        with open(os.path.join(out2, "hearth_result.json")) as f:
            result2 = json.load(f)
        self.assertFalse(result2["timings"]["cold"])
        self.assertEqual(result2["timings"]["load_s"], 0)
        self.assertEqual(result2["checksum"], result["checksum"])

        self.assertEqual(w.call({"op": "unload", "digests": [self.digest, "sha256:" + "0" * 64]})["ok"], True)
        resp = w.call(self.run_req(self.out_dir("out3")))
        self.assertFalse(resp["ok"])
        self.assertIn(f"model {self.digest} is not loaded; load it before a run that uses it", resp["error"])
        self.assertEqual(w.close(), 0)

    def test_checksum_depends_on_seed_and_weights(self):
        other = os.path.join(self.dir, "blob-b")
        d2, s2 = write_model(other, seed=1)
        w = self.start()
        self.assertTrue(w.call({"op": "load", "models": [self.model, {"name": "b", "digest": d2, "path": other, "size": s2}]})["ok"])
        sums = []
        for i, (models, inp) in enumerate([([self.digest], {"seed": 1}), ([self.digest], {"seed": 2}), ([d2], {"seed": 1})]):
            out = self.out_dir(f"o{i}")
            self.assertTrue(w.call(self.run_req(out, models=models, input=inp))["ok"])
            with open(os.path.join(out, "hearth_result.json")) as f:
                sums.append(json.load(f)["checksum"])
        self.assertEqual(len(set(sums)), 3, sums)

    def test_cancel_mid_run(self):
        w = self.start("--step-delay", "0.2", "--steps", "50")
        self.assertTrue(w.call({"op": "load", "models": [self.model]})["ok"])
        run_id = w.send(self.run_req(self.out_dir("out"), input={"passes": 100}))
        first = w.recv()
        self.assertEqual((first["id"], first["event"]), (run_id, "progress"))
        cancel_id = w.send({"op": "cancel", "target": run_id})
        answers = {}
        while len(answers) < 2:
            m = w.recv()
            if "ok" in m:
                answers[m["id"]] = m
        self.assertEqual(answers[cancel_id], {"id": cancel_id, "ok": True})
        self.assertEqual(answers[run_id], {"id": run_id, "ok": False, "error": "cancelled"})
        # The worker is still good: a cancel of a finished request is answered too.
        self.assertEqual(w.call({"op": "cancel", "target": run_id})["ok"], True)
        self.assertEqual(w.call({"op": "unload", "digests": [self.digest]})["ok"], True)

    def test_end_of_input_cancels_and_exits_zero(self):
        w = self.start("--step-delay", "0.2", "--steps", "50")
        self.assertTrue(w.call({"op": "load", "models": [self.model]})["ok"])
        run_id = w.send(self.run_req(self.out_dir("out"), input={"passes": 100}))
        self.assertEqual(w.recv()["event"], "progress")
        w.p.stdin.close()
        self.assertEqual(w.final(run_id), {"id": run_id, "ok": False, "error": "cancelled"})
        self.assertEqual(w.close(), 0)

    def test_bad_requests(self):
        w = self.start()
        resp = w.call({"op": "frobnicate"})
        self.assertEqual(resp["ok"], False)
        self.assertEqual(resp["error"], 'hearth_worker: unknown op "frobnicate"; this worker knows load, unload, run and cancel')

        missing = dict(self.model, path=os.path.join(self.dir, "nope"))
        resp = w.call({"op": "load", "models": [missing]})
        self.assertEqual((resp["ok"], resp["loaded"]), (False, []))
        self.assertIn("No such file or directory", resp["error"])
        self.assertIn('model "checkpoints/tiny.safetensors"', resp["error"])

        resp = w.call({"op": "load", "models": [dict(self.model, digest="sha256:" + "a" * 64)]})
        self.assertFalse(resp["ok"])
        self.assertIn(f"has digest {self.digest}, want sha256:{'a' * 64}; refusing to load it", resp["error"])

        resp = w.call({"op": "load", "models": [dict(self.model, digest="md5:x")]})
        self.assertIn('must start with "sha256:"', resp["error"])

        resp = w.call({"op": "load", "models": [dict(self.model, size=self.size + 1)]})
        self.assertIn(f"is {self.size} bytes, want {self.size + 1}", resp["error"])

        resp = w.call({"op": "load", "models": {"not": "a list"}})
        self.assertIn("load wants models as [{name, digest, path, size}]", resp["error"])

        resp = w.call({"op": "run", "job_id": "j", "kind": "worker", "models": [self.digest]})
        self.assertEqual(resp["error"], "hearth_worker: run needs an output_dir")

        resp = w.call(self.run_req(self.out_dir("o")))
        self.assertIn("is not loaded", resp["error"])

        # Lines that are not requests are logged and skipped; fields the worker
        # does not know are ignored, as the protocol asks.
        w.send_raw(b"this is not json\n[1,2]\n\n")
        resp = w.call({"op": "load", "models": [self.model], "priority": "later-agent-field"})
        self.assertTrue(resp["ok"], resp)
        self.assertEqual(w.close(), 0)
        self.assertIn("request is not JSON", w.stderr_text())

    def test_partial_load_reports_what_loaded(self):
        bad = os.path.join(self.dir, "bad")
        with open(bad, "wb") as f:
            f.write(b"\x00" * 64)
        w = self.start()
        resp = w.call({"op": "load", "models": [self.model, {"name": "bad", "digest": digest_of(bad), "path": bad, "size": 64}]})
        self.assertEqual((resp["ok"], resp["loaded"]), (False, [self.digest]))
        self.assertIn("not a safetensors file", resp["error"])

    def test_malformed_safetensors(self):
        cases = {
            "short": (b"\x01\x02", "too short for a safetensors header"),
            "huge-header": (struct.pack("<Q", 1 << 40) + b"{}", "header length 1099511627776 is larger than the file"),
            "not-json": (struct.pack("<Q", 4) + b"{{{{", "its header is not JSON"),
            "not-object": (struct.pack("<Q", 2) + b"[]", "its header is not a JSON object"),
            "pickle": (b"\x80\x02}q\x00(X\x05\x00\x00\x00state" + b"\x00" * 32, "not a safetensors file"),
            "truncated": (None, "the file is truncated"),
            "bad-dtype": (None, "has dtype 'Q7'"),
            "wrong-span": (None, "spans 12 bytes, but F32 [4] needs 16"),
        }
        w = self.start()
        for name, (data, want) in cases.items():
            with self.subTest(name):
                path = os.path.join(self.dir, name)
                if name == "truncated":
                    write_model(path)
                    with open(path, "r+b") as f:
                        f.truncate(os.path.getsize(path) - 10)
                elif name in ("bad-dtype", "wrong-span"):
                    hdr = {"t": {"dtype": "Q7" if name == "bad-dtype" else "F32", "shape": [4], "data_offsets": [0, 16 if name == "bad-dtype" else 12]}}
                    raw = json.dumps(hdr).encode()
                    with open(path, "wb") as f:
                        f.write(struct.pack("<Q", len(raw)) + raw + b"\x00" * 16)
                else:
                    with open(path, "wb") as f:
                        f.write(data)
                m = {"name": name, "digest": digest_of(path), "path": path, "size": os.path.getsize(path)}
                resp = w.call({"op": "load", "models": [m]})
                self.assertEqual((resp["ok"], resp["loaded"]), (False, []), resp)
                self.assertIn(want, resp["error"])
                self.assertIn(path, resp["error"])
        self.assertEqual(w.close(), 0)

    def test_max_bytes(self):
        w = self.start("--max-bytes", "100")
        resp = w.call({"op": "load", "models": [self.model]})
        self.assertFalse(resp["ok"])
        self.assertIn("over this worker's --max-bytes 100", resp["error"])

    def test_verify_size_only_skips_the_hash(self):
        w = self.start("--verify", "size")
        resp = w.call({"op": "load", "models": [dict(self.model, digest="sha256:" + "b" * 64)]})
        self.assertTrue(resp["ok"], resp)  # trusting the agent's check, as asked

    def test_answers_by_id_while_a_run_goes(self):
        w = self.start("--step-delay", "0.1")
        self.assertTrue(w.call({"op": "load", "models": [self.model]})["ok"])
        run_id = w.send(self.run_req(self.out_dir("out"), input={"passes": 1000}))
        unload_id = w.send({"op": "unload", "digests": ["sha256:" + "c" * 64]})
        self.assertEqual(w.final(unload_id), {"id": unload_id, "ok": True})  # it did not wait for the run
        w.send({"op": "cancel", "target": run_id})
        self.assertEqual(w.final(run_id)["error"], "cancelled")

    def test_auto_backend_without_torch_fails_clearly(self):
        try:
            import torch  # noqa: F401
            self.skipTest("torch is installed here; auto would pick it")
        except ImportError:
            pass
        p = subprocess.run([sys.executable, WORKER, "--backend", "auto"], input=b"", capture_output=True, timeout=WAIT_S)
        self.assertEqual(p.returncode, 1)
        self.assertEqual(p.stdout, b"")  # no hello
        self.assertIn(b"torch does not import", p.stderr)
        self.assertIn(b"--backend fake", p.stderr)


class BenchDriverTest(unittest.TestCase):
    """gpu_bench.py drives the worker as the agent does; check that driver
    here with the fake backend, since the benchmark itself needs a GPU."""

    def test_cold_then_warm_job(self):
        import gpu_bench

        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "m")
            digest, size = write_model(path)
            model = {"name": "checkpoints/m.safetensors", "digest": digest, "path": path, "size": size}
            agent = gpu_bench.Agent(["--backend", "fake"], dict(os.environ), stderr=subprocess.DEVNULL)
            try:
                cold = gpu_bench.worker_job(agent, model, d, 1, cold=True)
                warm = gpu_bench.worker_job(agent, model, d, 2, cold=False)
            finally:
                agent.close()
            self.assertIsInstance(cold["load_s"], float)
            self.assertIsNone(warm["load_s"])
            self.assertTrue(cold["device"].startswith("fake"))
        self.assertEqual(gpu_bench.parse_size("6GiB"), 6 << 30)
        self.assertEqual(gpu_bench.parse_size("1.5GB"), 1_500_000_000)


class SafetensorsTest(unittest.TestCase):
    """The header parser alone, on files written by hand."""

    def test_round_trip(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "m")
            hearth_worker.write_safetensors(path, [("a", "BF16", [2, 3], b"\x01" * 12), ("b", "U8", [0], b"")])
            st = hearth_worker.read_safetensors_header(path, '"m"')
            self.assertEqual(st.data_start % 8, 0)
            self.assertEqual(st.data_len, 12)
            self.assertEqual([(t.name, t.dtype, t.shape, t.begin, t.end) for t in st.tensors],
                             [("a", "BF16", [2, 3], 0, 12), ("b", "U8", [0], 12, 12)])

    def test_metadata_is_not_a_tensor(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "m")
            raw = json.dumps({"__metadata__": {"format": "pt"}, "x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
            with open(path, "wb") as f:
                f.write(struct.pack("<Q", len(raw)) + raw + b"\x00" * 4)
            st = hearth_worker.read_safetensors_header(path, '"m"')
            self.assertEqual([t.name for t in st.tensors], ["x"])
            self.assertEqual(st.metadata, {"format": "pt"})

    def test_split(self):
        self.assertEqual(hearth_worker._split([], 4), [[]])
        self.assertEqual(hearth_worker._split([1, 2, 3], 8), [[1], [2], [3]])
        self.assertEqual(hearth_worker._split(list(range(5)), 2), [[0, 1, 2], [3, 4]])


if __name__ == "__main__":
    unittest.main()
