"""fffserve as Triton's own HTTP client sees it (tritonclient[http]), and KServe's v2 REST client.

Starts the release fffserve (env FFFSERVE, default target/release/fffserve) on a free port over a
temporary repository of plans compiled with fffc (env FFFC, default target/release/fffc) from the
fixtures: bert-tiny, the FFF encoder and bert-tiny with the fixtures' tokenizer. Every answer is
compared with fffrun's (env FFFRUN, default target/release/fffrun, else target/debug/fffrun) on the
same plan and input, within 1e-5.

    LOAD_SECONDS=3 python -m pytest -q server/tests
"""

import asyncio
import http.client
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

tritonhttp = pytest.importorskip("tritonclient.http")

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "models" / "fixtures"
TOL = 1e-5
# Plan name -> (ONNX fixture, extra fffc flags, input JSON or None for text).
PLANS = {
    "bert-tiny": ("bert-tiny.onnx", [], "bert-tiny.input.json"),
    "fff-encoder-tiny": ("fff-encoder-tiny.onnx", [], "fff-encoder-tiny.input.json"),
    "bert-tiny-text": (
        "bert-tiny.onnx",
        ["--tokenizer", str(FIXTURES / "text" / "tokenizer.json"), "--pooling", "mean", "--normalize"],
        None,
    ),
}
TENSOR_MODELS = ["bert-tiny", "fff-encoder-tiny"]


def binary(env, release_name):
    path = os.environ.get(env)
    if path:
        return Path(path)
    for profile in ("release", "debug"):
        p = ROOT / "target" / profile / release_name
        if p.is_file():
            return p
    return ROOT / "target" / "release" / release_name


FFFSERVE = binary("FFFSERVE", "fffserve")
FFFC = binary("FFFC", "fffc")
FFFRUN = binary("FFFRUN", "fffrun")


def close(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and bool(np.all(np.abs(a - b) <= TOL))


class Server:
    """A running fffserve; its stderr is drained into .log by a thread."""

    def __init__(self, repo, *extra):
        if not FFFSERVE.is_file():
            pytest.fail(f"no fffserve at {FFFSERVE}: cargo build --release -p fff-server (or set FFFSERVE)")
        cmd = [str(FFFSERVE), "--model-repository", str(repo), "--host", "127.0.0.1", "--http-port", "0", *extra]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        self.log = []
        deadline = time.time() + 60
        self.port = None
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.log.append(line)
            m = re.search(r"fffserve listening on http://([^:\s]+):(\d+)", line)
            if m:
                self.port = int(m.group(2))
                break
        if self.port is None:
            self.proc.kill()
            pytest.fail("fffserve did not say where it listens:\n" + "".join(self.log))
        threading.Thread(target=self._drain, daemon=True).start()
        self.url = f"127.0.0.1:{self.port}"

    def _drain(self):
        for line in self.proc.stderr:
            self.log.append(line)

    def client(self, **kw):
        return tritonhttp.InferenceServerClient(url=self.url, **kw)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def fffrun(plan, input_path):
    out = subprocess.run([str(FFFRUN), str(plan), str(input_path)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def repo():
    for b in (FFFC, FFFRUN):
        if not b.is_file():
            pytest.fail(f"no {b.name} at {b}: cargo build --release --bins (or set {b.name.upper()})")
    with tempfile.TemporaryDirectory(prefix="fffserve-triton-") as d:
        d = Path(d)
        for name, (onnx, flags, _) in PLANS.items():
            subprocess.run(
                [str(FFFC), "compile", str(FIXTURES / onnx), "-o", str(d / f"{name}.fff"), *flags],
                check=True,
                capture_output=True,
            )
        yield d


@pytest.fixture(scope="module")
def cases(repo):
    """Per tensor model: its inputs (name -> int64 array) and fffrun's outputs (name -> array)."""
    out = {}
    for name in TENSOR_MODELS:
        input_path = FIXTURES / PLANS[name][2]
        inputs = {k: np.asarray(v, dtype=np.int64) for k, v in json.loads(input_path.read_text()).items()}
        expected = {k: np.asarray(v, dtype=np.float32) for k, v in fffrun(repo / f"{name}.fff", input_path).items()}
        out[name] = (inputs, expected)
    return out


@pytest.fixture(scope="module")
def texts():
    return json.loads((FIXTURES / "text" / "texts.json").read_text())


@pytest.fixture(scope="module")
def text_expected(repo, texts, tmp_path_factory):
    p = tmp_path_factory.mktemp("text") / "texts.json"
    p.write_text(json.dumps({"text": texts}))
    return np.asarray(fffrun(repo / "bert-tiny-text.fff", p)["embedding"], dtype=np.float32)


@pytest.fixture(scope="module")
def server(repo):
    s = Server(repo)
    yield s
    s.stop()


def infer(client, model, inputs, binary_data=True, outputs=None):
    reqs = []
    for name, arr in inputs.items():
        i = tritonhttp.InferInput(name, list(arr.shape), "INT64")
        i.set_data_from_numpy(arr, binary_data=binary_data)
        reqs.append(i)
    outs = [tritonhttp.InferRequestedOutput(n, binary_data=binary_data) for n in (outputs or [])]
    return client.infer(model, reqs, outputs=outs or None)


def test_health_and_metadata(server, cases):
    c = server.client()
    assert c.is_server_live()
    assert c.is_server_ready()
    for name in PLANS:
        assert c.is_model_ready(name)
        assert c.is_model_ready(name, model_version="1")
    assert not c.is_model_ready("no-such-model")
    meta = c.get_server_metadata()
    assert meta["name"] == "fffserve"
    assert "binary_tensor_data" in meta["extensions"]
    for name in TENSOR_MODELS:
        inputs, expected = cases[name]
        m = c.get_model_metadata(name)
        assert m["name"] == name and m["versions"] == ["1"] and m["platform"] == "fff"
        assert sorted(i["name"] for i in m["inputs"]) == sorted(inputs)
        assert sorted(o["name"] for o in m["outputs"]) == sorted(expected)
        assert all(i["datatype"] == "INT64" and len(i["shape"]) == 2 for i in m["inputs"])
        assert all(o["datatype"] == "FP32" for o in m["outputs"])
        assert c.get_model_metadata(name, model_version="1")["name"] == name
    m = c.get_model_metadata("bert-tiny-text")
    assert m["parameters"]["text"] in (True, "true")
    c.close()


@pytest.mark.parametrize("binary_data", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("model", TENSOR_MODELS)
def test_infer_matches_fffrun(server, cases, model, binary_data):
    inputs, expected = cases[model]
    c = server.client()
    # Without an outputs list the server answers in JSON; with one, as each output asks.
    for outputs in (None, list(expected)):
        r = infer(c, model, inputs, binary_data=binary_data, outputs=outputs)
        assert r.get_response()["model_name"] == model
        for name, want in expected.items():
            got = r.as_numpy(name)
            assert got is not None, name
            assert got.dtype == np.float32
            assert close(got, want), f"{model}/{name}: max diff {np.max(np.abs(got - want))}"
    # One row alone gets the first row of the two-row answer (rows attend only to themselves).
    one = {k: v[:1] for k, v in inputs.items()}
    r = infer(c, model, one, binary_data=binary_data, outputs=list(expected))
    for name, want in expected.items():
        got = r.as_numpy(name)
        assert close(got, want[:1]), f"{model}/{name} row 0 alone: max diff {np.max(np.abs(got - want[:1]))}"
    c.close()


@pytest.mark.parametrize("binary_data", [True, False], ids=["binary", "json"])
def test_bytes_text_to_embedding(server, texts, text_expected, binary_data):
    c = server.client()
    i = tritonhttp.InferInput("text", [len(texts)], "BYTES")
    i.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_), binary_data=binary_data)
    out = tritonhttp.InferRequestedOutput("embedding", binary_data=binary_data)
    r = c.infer("bert-tiny-text", [i], outputs=[out])
    got = r.as_numpy("embedding")
    assert got.shape == text_expected.shape
    assert close(got, text_expected), f"max diff {np.max(np.abs(got - text_expected))}"
    c.close()


def test_load_32_threads(server, cases):
    """32 threads, each with its own client, for LOAD_SECONDS; every answer checked, no errors."""
    seconds = float(os.environ.get("LOAD_SECONDS", "10"))
    stop_at = time.time() + seconds
    counts, failures, lock = [0] * 32, [], threading.Lock()

    def worker(k):
        rng = random.Random(k)
        c = server.client(connection_timeout=30.0, network_timeout=60.0)
        try:
            while time.time() < stop_at:
                model = rng.choice(TENSOR_MODELS)
                inputs, expected = cases[model]
                rows = rng.choice([1, 2])
                inputs = {n: v[:rows] for n, v in inputs.items()}
                r = infer(c, model, inputs, binary_data=rng.random() < 0.75, outputs=list(expected))
                for name, want in expected.items():
                    got = r.as_numpy(name)
                    if rows == 2 and not close(got, want):
                        raise AssertionError(f"{model}/{name}: max diff {np.max(np.abs(got - want))}")
                    if rows == 1 and not close(got, want[:1]):
                        raise AssertionError(f"{model}/{name}: row 0 alone differs by {np.max(np.abs(got - want[:1]))}")
                counts[k] += 1
        except Exception as e:  # noqa: BLE001 - every failure is reported
            with lock:
                failures.append(f"thread {k}: {type(e).__name__}: {e}")
        finally:
            c.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    assert not failures, "\n".join(failures[:10])
    assert all(n > 0 for n in counts), counts
    total = sum(counts)
    print(f"\nload: {total} requests in {seconds:.0f} s from 32 threads ({total / seconds:.0f}/s), no errors")
    assert server.client().is_server_live()


def raw(server, method, path, body=b"", headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_malformed_requests_get_4xx_and_the_server_stays_live(server, cases):
    bad = [
        ("POST", "/v2/models/bert-tiny/infer", b"{not json", {"Content-Type": "application/json"}),
        ("POST", "/v2/models/bert-tiny/infer", b'{"inputs": 7}', {}),
        ("POST", "/v2/models/bert-tiny/infer", b'{"inputs": [{"name": "input_ids", "datatype": "INT64", '
         b'"shape": [1, 3], "data": [1, 2]}]}', {}),
        ("POST", "/v2/models/bert-tiny/infer", b'{"inputs": [{"name": "nope", "datatype": "FP32", '
         b'"shape": [1], "data": [1.0]}]}', {}),
        # The binary extension's header says the JSON part is longer than the body.
        ("POST", "/v2/models/bert-tiny/infer", b'{"inputs": []}', {"Inference-Header-Content-Length": "999"}),
        ("POST", "/v2/models/bert-tiny/infer", b'{"inputs": []}', {"Inference-Header-Content-Length": "x"}),
        ("POST", "/v2/models/no-such-model/infer", b'{"inputs": []}', {}),
        ("POST", "/v2/models/bert-tiny/versions/7/infer", b'{"inputs": []}', {}),
        ("POST", "/v2/models/bert-tiny-text/infer", b'{"inputs": [{"name": "text", "datatype": "BYTES", '
         b'"shape": [1], "data": [5]}]}', {}),
    ]
    for method, path, body, headers in bad:
        status, text = raw(server, method, path, body, headers)
        assert 400 <= status < 500, (path, body, headers, status, text)
    # A request cut off in the middle of its body: the connection closes early.
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /v2/models/bert-tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"in")
    c = server.client()
    assert c.is_server_live() and c.is_server_ready()
    inputs, expected = cases["bert-tiny"]
    r = infer(c, "bert-tiny", inputs, outputs=list(expected))
    for name, want in expected.items():
        assert close(r.as_numpy(name), want)
    c.close()


def test_unknown_model_is_an_error_for_the_client(server):
    c = server.client()
    i = tritonhttp.InferInput("input_ids", [1, 1], "INT64")
    i.set_data_from_numpy(np.zeros((1, 1), dtype=np.int64))
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException):
        c.infer("no-such-model", [i])
    c.close()


def test_sigterm_exits_0_within_10_s(repo, cases):
    s = Server(repo)
    c = s.client()
    inputs, expected = cases["fff-encoder-tiny"]
    infer(c, "fff-encoder-tiny", inputs, outputs=list(expected))
    c.close()
    t0 = time.time()
    s.proc.send_signal(signal.SIGTERM)
    try:
        rc = s.proc.wait(10)
    except subprocess.TimeoutExpired:
        s.proc.kill()
        pytest.fail("fffserve still runs 10 s after SIGTERM")
    assert rc == 0, "".join(s.log)
    print(f"\nSIGTERM: exited 0 after {time.time() - t0:.2f} s")


def test_kserve_v2_rest_client(server, cases):
    """KServe's own v2 REST client (pip install kserve), where it is installed."""
    kserve = pytest.importorskip("kserve")
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    async def run():
        client = InferenceRESTClient(RESTConfig(protocol="v2", retries=1, timeout=30))
        base = f"http://{server.url}"
        try:
            assert await client.is_server_live(base)
            assert await client.is_server_ready(base)
            for model in TENSOR_MODELS:
                assert await client.is_model_ready(base, model)
                inputs, expected = cases[model]
                # A plain v2 JSON request through the client: its response parsing.
                body = {"inputs": [{"name": n, "shape": list(a.shape), "datatype": "INT64",
                                    "data": a.ravel().tolist()} for n, a in inputs.items()]}
                res = await client.infer(base, body, model_name=model)
                got = {o.name: o.as_numpy() for o in res.outputs}
                for name, want in expected.items():
                    assert close(got[name].astype(np.float32), want), (model, name, "dict")
                # The client's own InferRequest, JSON and binary tensor data.
                for binary_data in (False, True):
                    ins = []
                    for name, arr in inputs.items():
                        i = InferInput(name, list(arr.shape), "INT64")
                        i.set_data_from_numpy(arr, binary_data=binary_data)
                        ins.append(i)
                    # Its body carries "model_name", which the v2 request does not define: ignored.
                    res = await client.infer(base, InferRequest(model_name=model, infer_inputs=ins),
                                             model_name=model)
                    got = {o.name: o.as_numpy() for o in res.outputs}
                    for name, want in expected.items():
                        assert close(got[name].astype(np.float32), want), (model, name, binary_data)
        finally:
            await client.close()

    asyncio.run(run())
    print(f"\nkserve {getattr(kserve, '__version__', '')} v2 REST client: health, readiness and infer agree")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", *sys.argv[1:]]))
