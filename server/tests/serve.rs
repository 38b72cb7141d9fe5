//! fffserve end to end: the real binary on a free port over a model repository of bert-tiny plans.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use fff_runtime::{Model, Tensor};
use serde_json::{json, Value};

const INFER: &str = "/v2/models/bert/infer";

/// The library's own outputs for bert-tiny's fixture inputs.
fn library_outputs() -> Vec<(String, Tensor)> {
    let model = Model::load(repository().join("bert.fff")).unwrap();
    let input = read_json(&fixture("bert-tiny.input.json"));
    let (inputs, _) = fff_runtime::io::parse_inputs(&input.to_string(), model.inputs())
        .unwrap_or_else(|e| {
            panic!("{e}");
        });
    model.run(inputs).unwrap()
}

fn tensor_floats(t: &Tensor) -> Vec<f32> {
    match t {
        Tensor::F32(a) => a.iter().copied().collect(),
        other => panic!("not f32: {:?}", other.dtype()),
    }
}

#[test]
fn health_and_metadata() {
    let server = Server::start(&[]);
    assert_eq!(server.get("/v2/health/live").status, 200);
    assert_eq!(server.get("/v2/health/ready").status, 200);
    let meta = server.get("/v2").json();
    assert_eq!(meta["name"], "fffserve");
    assert_eq!(meta["extensions"], json!(["binary_tensor_data"]));
    assert!(meta["version"].is_string());

    for path in ["/v2/models/bert", "/v2/models/bert/versions/1"] {
        let m = server.get(path).json();
        assert_eq!(m["name"], "bert");
        assert_eq!(m["versions"], json!(["1"]));
        assert_eq!(m["platform"], "fff");
        assert_eq!(m["parameters"]["dynamic_batching"], true, "{m}");
        let inputs = m["inputs"].as_array().unwrap();
        assert_eq!(inputs.len(), 3);
        for i in inputs {
            assert_eq!(i["datatype"], "INT64", "{i}");
            assert_eq!(i["shape"], json!([-1, -1]), "{i}");
        }
        let out = output(&m, "last_hidden_state");
        assert_eq!(out["datatype"], "FP32");
        assert_eq!(out["shape"], json!([-1, -1, 64]));
    }
    assert_eq!(server.get("/v2/models/bert/ready").status, 200);
    assert_eq!(server.get("/v2/models/bert/versions/1/ready").status, 200);
    assert_eq!(server.get("/v2/models/text/ready").status, 200);
    let missing = server.get("/v2/models/nope");
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"].as_str().unwrap().contains("nope"));
    assert_eq!(server.get("/v2/models/nope/ready").status, 404);
    assert_eq!(server.get("/v2/models/bert/versions/2").status, 404);
    assert_eq!(
        server.post_json("/v2/models/nope/infer", &json!({})).status,
        404
    );
    assert_eq!(server.get("/v2/nothing/here").status, 404);
}

#[test]
fn infer_json_matches_fixture_and_library() {
    let server = Server::start(&[]);
    let mut req = bert_request("INT64", 0..2);
    req["id"] = json!("request-7");
    let reply = server.post_json(INFER, &req);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let r = reply.json();
    assert_eq!(r["id"], "request-7");
    assert_eq!(r["model_name"], "bert");
    assert_eq!(r["model_version"], "1");
    let library = library_outputs();
    for name in ["last_hidden_state", "pooler_output"] {
        let out = output(&r, name);
        assert_eq!(out["datatype"], "FP32");
        let got = floats(&out["data"]);
        let d = max_diff(&got, &expected(name, 0..2));
        assert!(d < 1e-4, "{name}: {d} from the fixture");
        let lib = library.iter().find(|(n, _)| n == name).unwrap();
        assert_eq!(out["shape"], json!(lib.1.shape()));
        let d = max_diff(&got, &tensor_floats(&lib.1));
        assert!(d < 1e-5, "{name}: {d} from Model::run");
    }
}

#[test]
fn int32_inputs_and_the_outputs_filter() {
    let server = Server::start(&[]);
    let mut req = bert_request("INT32", 0..2);
    req["outputs"] = json!([{ "name": "pooler_output" }]);
    let r = server.post_json(INFER, &req);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = r.json();
    let outputs = r["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 1);
    assert_eq!(outputs[0]["name"], "pooler_output");
    let d = max_diff(
        &floats(&outputs[0]["data"]),
        &expected("pooler_output", 0..2),
    );
    assert!(d < 1e-4, "{d}");

    // Values that do not fit the datatype are refused.
    let mut bad = bert_request("INT32", 0..1);
    bad["inputs"][0]["data"][0] = json!(1u64 << 40);
    let r = server.post_json(INFER, &bad);
    assert_eq!(r.status, 400, "{}", r.text());
    // An output the model does not have.
    let mut bad = bert_request("INT64", 0..1);
    bad["outputs"] = json!([{ "name": "logits" }]);
    let r = server.post_json(INFER, &bad);
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("logits"));
    // FP32 for integer inputs is refused, naming the input.
    let mut bad = bert_request("INT64", 0..1);
    bad["inputs"][1]["datatype"] = json!("FP32");
    let r = server.post_json(INFER, &bad);
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("attention_mask"));
}

/// A request in the binary tensor data extension: JSON header, then each input's bytes.
fn binary_request(datatype: &str, width: usize, outputs: Value, top_binary: bool) -> Vec<u8> {
    let json_req = bert_request("INT64", 0..2);
    let mut header = json!({ "inputs": [], "outputs": outputs });
    if top_binary {
        header["parameters"] = json!({ "binary_data_output": true });
    }
    let mut tail = Vec::new();
    for input in json_req["inputs"].as_array().unwrap() {
        let values: Vec<i64> = input["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        let mut bytes = Vec::new();
        for v in values {
            if width == 4 {
                bytes.extend_from_slice(&(v as i32).to_le_bytes());
            } else {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
        }
        header["inputs"].as_array_mut().unwrap().push(json!({
            "name": input["name"],
            "datatype": datatype,
            "shape": input["shape"],
            "parameters": { "binary_data_size": bytes.len() },
        }));
        tail.extend_from_slice(&bytes);
    }
    if outputs.is_null() {
        header.as_object_mut().unwrap().remove("outputs");
    }
    let mut body = header.to_string().into_bytes();
    let n = body.len();
    body.extend_from_slice(&tail);
    let mut framed = n.to_string().into_bytes();
    framed.push(b'\n');
    framed.extend_from_slice(&body);
    framed
}

fn post_binary(server: &Server, framed: &[u8]) -> Reply {
    let newline = framed.iter().position(|&b| b == b'\n').unwrap();
    let n = std::str::from_utf8(&framed[..newline]).unwrap().to_string();
    request(
        server.port,
        "POST",
        INFER,
        &[
            ("Content-Type", "application/octet-stream"),
            ("Inference-Header-Content-Length", &n),
        ],
        &framed[newline + 1..],
    )
}

/// The JSON header and each binary output's f32 values, from a binary response.
fn split_binary(reply: &Reply) -> (Value, Vec<(String, Vec<f32>)>) {
    let n: usize = reply
        .header("inference-header-content-length")
        .expect("a binary response says its JSON length")
        .parse()
        .unwrap();
    let header: Value = serde_json::from_slice(&reply.body[..n]).unwrap();
    let mut rest = &reply.body[n..];
    let mut binary = Vec::new();
    for o in header["outputs"].as_array().unwrap() {
        if let Some(size) = o["parameters"]["binary_data_size"].as_u64() {
            let (mine, r) = rest.split_at(size as usize);
            rest = r;
            let values = mine
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            binary.push((o["name"].as_str().unwrap().to_string(), values));
        }
    }
    assert!(rest.is_empty(), "bytes left over");
    (header, binary)
}

#[test]
fn binary_requests_and_responses() {
    let server = Server::start(&[]);
    // Binary in (INT64 and INT32), JSON out.
    for (datatype, width) in [("INT64", 8), ("INT32", 4)] {
        let r = post_binary(
            &server,
            &binary_request(datatype, width, Value::Null, false),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.header("inference-header-content-length").is_none());
        let out = r.json();
        let d = max_diff(
            &floats(&output(&out, "last_hidden_state")["data"]),
            &expected("last_hidden_state", 0..2),
        );
        assert!(d < 1e-4, "{d}");
    }
    // Binary out for every output.
    let r = post_binary(&server, &binary_request("INT64", 8, Value::Null, true));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    let (header, binary) = split_binary(&r);
    assert_eq!(header["model_name"], "bert");
    assert_eq!(binary.len(), 2);
    for (name, values) in &binary {
        let d = max_diff(values, &expected(name, 0..2));
        assert!(d < 1e-4, "{name}: {d}");
    }
    // Per output: one binary, one JSON.
    let outputs = json!([
        { "name": "pooler_output", "parameters": { "binary_data": true } },
        { "name": "last_hidden_state", "parameters": { "binary_data": false } },
    ]);
    let r = post_binary(&server, &binary_request("INT64", 8, outputs, false));
    assert_eq!(r.status, 200, "{}", r.text());
    let (header, binary) = split_binary(&r);
    assert_eq!(binary.len(), 1);
    assert_eq!(binary[0].0, "pooler_output");
    assert!(max_diff(&binary[0].1, &expected("pooler_output", 0..2)) < 1e-4);
    let json_out = output(&header, "last_hidden_state");
    assert!(
        max_diff(
            &floats(&json_out["data"]),
            &expected("last_hidden_state", 0..2)
        ) < 1e-4
    );

    // A binary_data_size that does not match dtype x shape.
    let mut framed = binary_request("INT64", 8, Value::Null, false);
    let text = String::from_utf8_lossy(&framed).into_owned();
    let size = "\"binary_data_size\":112";
    assert!(text.contains(size), "{text}");
    let replaced = text.replacen(size, "\"binary_data_size\":104", 1);
    framed = replaced.into_bytes();
    let r = post_binary(&server, &framed);
    assert_eq!(r.status, 400, "{}", r.text());
}

#[test]
fn bytes_text_to_embedding() {
    let server = Server::start(&[]);
    let texts: Vec<String> =
        serde_json::from_value(read_json(&fixture("text/texts.json"))).unwrap();
    let expected_e = read_json(&fixture("text/expected.json"));
    let model = Model::load(repository().join("text.fff")).unwrap();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let library = model.embed(&refs, &Default::default()).unwrap();

    let req = json!({
        "inputs": [{ "name": "text", "datatype": "BYTES", "shape": [texts.len()], "data": texts }],
    });
    let r = server.post_json("/v2/models/text/infer", &req);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = r.json();
    let e = output(&r, "embedding");
    assert_eq!(e["datatype"], "FP32");
    assert_eq!(e["shape"], json!([texts.len(), 64]));
    let got = floats(&e["data"]);
    let d = max_diff(&got, &floats(&expected_e["embeddings"]["mean"]));
    assert!(d < 1e-4, "mean: {d} from the fixture");
    let d = max_diff(&got, &library.iter().copied().collect::<Vec<_>>());
    assert!(d < 1e-5, "mean: {d} from Model::embed");

    // The request's parameters override the plan's pooling and normalisation.
    let mut req2 = req.clone();
    req2["parameters"] = json!({ "pooling": "cls", "normalize": true });
    let r = server.post_json("/v2/models/text/infer", &req2).json();
    let d = max_diff(
        &floats(&output(&r, "embedding")["data"]),
        &floats(&expected_e["embeddings"]["cls_normalized"]),
    );
    assert!(d < 1e-4, "cls_normalized: {d}");

    // Binary BYTES: a 4-byte little-endian length before each element; binary output too.
    let mut tail = Vec::new();
    for t in &texts {
        tail.extend_from_slice(&(t.len() as u32).to_le_bytes());
        tail.extend_from_slice(t.as_bytes());
    }
    let header = json!({
        "inputs": [{ "name": "text", "datatype": "BYTES", "shape": [texts.len()],
                     "parameters": { "binary_data_size": tail.len() } }],
        "outputs": [{ "name": "embedding", "parameters": { "binary_data": true } }],
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend_from_slice(&tail);
    let n = header.len().to_string();
    let r = request(
        server.port,
        "POST",
        "/v2/models/text/infer",
        &[("Inference-Header-Content-Length", &n)],
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let (_, binary) = split_binary(&r);
    assert!(max_diff(&binary[0].1, &got) < 1e-6);

    // Bytes that are not UTF-8: 400 naming the element.
    let mut tail = Vec::new();
    for t in [&b"fine"[..], &[0xff, 0xfe, 0x41][..]] {
        tail.extend_from_slice(&(t.len() as u32).to_le_bytes());
        tail.extend_from_slice(t);
    }
    let header = json!({
        "inputs": [{ "name": "text", "datatype": "BYTES", "shape": [2],
                     "parameters": { "binary_data_size": tail.len() } }],
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend_from_slice(&tail);
    let n = header.len().to_string();
    let r = request(
        server.port,
        "POST",
        "/v2/models/text/infer",
        &[("Inference-Header-Content-Length", &n)],
        &body,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.json()["error"].as_str().unwrap().contains("element 1"),
        "{}",
        r.text()
    );

    // Text to a model without a tokenizer.
    let r = server.post_json(INFER, &req);
    assert_eq!(r.status, 400);
}

/// `name{labels} value` lines of the Prometheus text format, comments skipped.
/// A sample: metric name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), vec![]),
            Some((name, rest)) => {
                let rest = rest.strip_suffix('}').expect("labels close");
                let labels = rest
                    .split(',')
                    .filter(|l| !l.is_empty())
                    .map(|l| {
                        let (k, v) = l.split_once('=').expect("label=value");
                        (k.to_string(), v.trim_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels)
            }
        };
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad name {name}"
        );
        samples.push((name, labels, value));
    }
    samples
}

fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(k2, v2)| k2 == k && v2 == v))
        })
        .map(|(_, _, v)| *v)
}

#[test]
fn metrics_count_requests() {
    let server = Server::start(&[]);
    for _ in 0..3 {
        assert_eq!(
            server.post_json(INFER, &bert_request("INT64", 0..1)).status,
            200
        );
    }
    assert_eq!(server.post_json(INFER, &json!({"inputs": 5})).status, 400);
    let r = server.get("/metrics");
    assert_eq!(r.status, 200);
    let text = r.text();
    let samples = parse_metrics(&text);
    let ok = [("model", "bert"), ("outcome", "success")];
    assert_eq!(
        sample(&samples, "fffserve_requests_total", &ok),
        Some(3.0),
        "{text}"
    );
    let bad = [("model", "bert"), ("outcome", "client_error")];
    assert_eq!(
        sample(&samples, "fffserve_requests_total", &bad),
        Some(1.0),
        "{text}"
    );
    let bert = [("model", "bert")];
    assert_eq!(
        sample(&samples, "fffserve_request_duration_seconds_count", &bert),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &samples,
            "fffserve_request_duration_seconds_bucket",
            &[("model", "bert"), ("le", "+Inf")]
        ),
        Some(4.0)
    );
    assert_eq!(
        sample(&samples, "fffserve_queue_depth", &bert),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(&samples, "fffserve_batch_size_count", &bert),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&samples, "fffserve_batch_size_sum", &bert),
        Some(3.0),
        "{text}"
    );
}

#[test]
fn malformed_requests_get_400_and_the_server_goes_on() {
    let server = Server::start(&["--max-request-bytes", "4K"]);
    let raw = |body: &[u8]| {
        request(
            server.port,
            "POST",
            INFER,
            &[("Content-Type", "application/json")],
            body,
        )
    };
    for body in [
        &b"{not json"[..],
        b"",
        b"{\"inputs\": [{\"name\": 3}]}",
        b"[1, 2]",
    ] {
        let r = raw(body);
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(body));
        assert!(r.json()["error"].is_string());
    }
    // Wrong shapes: data that does not fill the shape, a rank the model does not take, a missing input.
    let mut req = bert_request("INT64", 0..1);
    req["inputs"][0]["shape"] = json!([1, 8]);
    assert_eq!(server.post_json(INFER, &req).status, 400);
    let mut req = bert_request("INT64", 0..1);
    req["inputs"][0]["shape"] = json!([7]);
    assert_eq!(server.post_json(INFER, &req).status, 400);
    let mut req = bert_request("INT64", 0..1);
    req["inputs"].as_array_mut().unwrap().pop();
    let r = server.post_json(INFER, &req);
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("token_type_ids"));
    // Inputs whose sequence lengths disagree pass the parser's checks; the model refuses them.
    let mut req = bert_request("INT64", 0..1);
    req["inputs"][1]["shape"] = json!([1, 6]);
    req["inputs"][1]["data"].as_array_mut().unwrap().pop();
    let r = server.post_json(INFER, &req);
    assert_eq!(r.status, 400, "{}", r.text());
    // Too large: 413.
    let big = vec![b' '; 5000];
    assert_eq!(raw(&big).status, 413);
    // And it still answers.
    let r = server.post_json(INFER, &bert_request("INT64", 0..2));
    assert_eq!(r.status, 200);
    let d = max_diff(
        &floats(&output(&r.json(), "pooler_output")["data"]),
        &expected("pooler_output", 0..2),
    );
    assert!(d < 1e-4);
}

/// A request heavy enough to keep a one-thread model busy for a while: `rows` rows of `seq` tokens.
fn heavy_request(rows: usize, seq: usize) -> Value {
    let ids: Vec<i64> = (0..rows * seq).map(|i| (i % 400) as i64 + 10).collect();
    let ones = vec![1i64; rows * seq];
    let zeros = vec![0i64; rows * seq];
    json!({ "inputs": [
        { "name": "input_ids", "datatype": "INT64", "shape": [rows, seq], "data": ids },
        { "name": "attention_mask", "datatype": "INT64", "shape": [rows, seq], "data": ones },
        { "name": "token_type_ids", "datatype": "INT64", "shape": [rows, seq], "data": zeros },
    ]})
}

#[test]
fn a_full_queue_answers_503_at_once() {
    let server = Server::start(&[
        "--max-queue",
        "1",
        "--max-batch-size",
        "1",
        "--threads",
        "1",
    ]);
    let body = heavy_request(16, 64);
    let port = server.port;
    let handles: Vec<_> = (0..12)
        .map(|_| {
            let body = body.clone();
            std::thread::spawn(move || {
                let start = Instant::now();
                let r = request(port, "POST", INFER, &[], body.to_string().as_bytes());
                (r.status, start.elapsed())
            })
        })
        .collect();
    let results: Vec<(u16, Duration)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    let full = results.iter().filter(|(s, _)| *s == 503).count();
    assert_eq!(ok + full, results.len(), "{results:?}");
    assert!(ok >= 1 && full >= 1, "{results:?}");
    let text = server.get("/metrics").text();
    let samples = parse_metrics(&text);
    let rejected = [("model", "bert"), ("outcome", "rejected")];
    assert_eq!(
        sample(&samples, "fffserve_requests_total", &rejected),
        Some(full as f64)
    );
    // Afterwards it serves again.
    assert_eq!(
        server.post_json(INFER, &bert_request("INT64", 0..2)).status,
        200
    );
}

#[test]
fn a_slow_client_does_not_hold_up_others() {
    let server = Server::start(&[]);
    let body = bert_request("INT64", 0..1).to_string().into_bytes();
    let port = server.port;
    let slow_done = Arc::new(AtomicBool::new(false));
    let flag = slow_done.clone();
    let slow = std::thread::spawn(move || {
        let r = slow_request(port, INFER, &body, Duration::from_millis(4), || {});
        flag.store(true, Ordering::SeqCst);
        r
    });
    std::thread::sleep(Duration::from_millis(100));
    let mut served = 0;
    while !slow_done.load(Ordering::SeqCst) && served < 20 {
        let r = server.post_json(INFER, &bert_request("INT64", 1..2));
        assert_eq!(r.status, 200);
        served += 1;
    }
    assert!(
        served >= 20,
        "only {served} requests while the slow client sent its body"
    );
    let r = slow.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let d = max_diff(
        &floats(&output(&r.json(), "pooler_output")["data"]),
        &expected("pooler_output", 0..1),
    );
    assert!(d < 1e-4);
}

#[test]
fn thirty_two_concurrent_clients() {
    let server = Server::start(&["--max-queue-delay-ms", "2"]);
    let port = server.port;
    let errors = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let stop = Instant::now() + Duration::from_secs(3);
    let variants: Vec<(Vec<u8>, std::ops::Range<usize>)> = [0..1, 1..2, 0..2]
        .into_iter()
        .map(|rows| {
            (
                bert_request("INT64", rows.clone()).to_string().into_bytes(),
                rows,
            )
        })
        .collect();
    let expectations: Vec<Vec<f32>> = variants
        .iter()
        .map(|(_, rows)| expected("last_hidden_state", rows.clone()))
        .collect();
    let variants = Arc::new((variants, expectations));
    let handles: Vec<_> = (0..32)
        .map(|c| {
            let (errors, answered, variants) = (errors.clone(), answered.clone(), variants.clone());
            std::thread::spawn(move || {
                let mut k = c;
                while Instant::now() < stop {
                    let (body, _) = &variants.0[k % 3];
                    let r = request(port, "POST", INFER, &[], body);
                    let ok = r.status == 200 && {
                        let got = floats(&output(&r.json(), "last_hidden_state")["data"]);
                        max_diff(&got, &variants.1[k % 3]) < 1e-4
                    };
                    if !ok {
                        errors.fetch_add(1, Ordering::SeqCst);
                        eprintln!("bad answer: {} {}", r.status, r.text());
                    }
                    answered.fetch_add(1, Ordering::SeqCst);
                    k += 1;
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let n = answered.load(Ordering::SeqCst);
    assert_eq!(errors.load(Ordering::SeqCst), 0);
    assert!(n >= 32, "{n} answers");
    // Requests were batched: some runs took more rows than any one request has.
    let samples = parse_metrics(&server.get("/metrics").text());
    let bert = [("model", "bert")];
    let runs = sample(&samples, "fffserve_batch_size_count", &bert).unwrap();
    let rows = sample(&samples, "fffserve_batch_size_sum", &bert).unwrap();
    eprintln!(
        "{n} answers in 3 s; {runs} runs of {:.2} rows on average",
        rows / runs
    );
    assert!(
        runs < n as f64,
        "no request was batched with another ({runs} runs, {n} answers)"
    );
}

#[test]
fn sigterm_finishes_the_request_in_flight() {
    let mut server = Server::start(&[]);
    let body = bert_request("INT64", 0..2).to_string().into_bytes();
    let port = server.port;
    let pid = server.child.id() as i32;
    let client = std::thread::spawn(move || {
        slow_request(port, INFER, &body, Duration::from_millis(2), || {
            // Once the server has read the head, the request is in flight.
            std::thread::sleep(Duration::from_millis(300));
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        })
    });
    let r = client.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let d = max_diff(
        &floats(&output(&r.json(), "last_hidden_state")["data"]),
        &expected("last_hidden_state", 0..2),
    );
    assert!(d < 1e-4);
    let started = Instant::now();
    let code = server.wait(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{}", server.stderr.lock().unwrap());
    assert!(started.elapsed() < Duration::from_secs(10));
    // New connections are refused once it has stopped.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn a_lone_request_does_not_wait() {
    // A request that finds the model idle runs at once, whatever the batching window: it waits
    // well under a millisecond in the queue.
    let server = Server::start(&["--max-queue-delay-ms", "50"]);
    let body = bert_request("INT64", 0..1).to_string().into_bytes();
    let mut times = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        let r = request(server.port, "POST", INFER, &[], &body);
        assert_eq!(r.status, 200);
        times.push(t.elapsed());
    }
    times.sort();
    let model = Model::load(repository().join("bert.fff")).unwrap();
    let (inputs, _) =
        fff_runtime::io::parse_inputs(std::str::from_utf8(&body).unwrap(), model.inputs()).unwrap();
    let mut direct = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        model.run(inputs.clone()).unwrap();
        direct.push(t.elapsed());
    }
    direct.sort();
    let samples = parse_metrics(&server.get("/metrics").text());
    let bert = [("model", "bert")];
    let waits = sample(&samples, "fffserve_queue_wait_seconds_count", &bert).unwrap();
    let waited = sample(&samples, "fffserve_queue_wait_seconds_sum", &bert).unwrap();
    assert_eq!(waits, 30.0);
    let mean_wait = waited / waits;
    eprintln!(
        "median over HTTP {:?}, direct run {:?}; mean wait in the queue {:.3} ms",
        times[times.len() / 2],
        direct[direct.len() / 2],
        mean_wait * 1e3
    );
    assert!(
        mean_wait < 1e-3,
        "a lone request waited {mean_wait} s in the queue"
    );
}

#[test]
fn polling_reloads_changed_plans_and_unloads_removed_ones() {
    let dir = private_repository("poll");
    let mut server = Server::start_in(&dir, &["--poll-repository-s", "1"]);
    assert_eq!(server.get("/v2/models/text/ready").status, 200);
    std::fs::remove_file(dir.join("text.fff")).unwrap();
    std::fs::copy(dir.join("bert.fff"), dir.join("copy.fff")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && (server.get("/v2/models/text/ready").status != 404
            || server.get("/v2/models/copy/ready").status != 200)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(server.get("/v2/models/text/ready").status, 404);
    let r = server.post_json("/v2/models/copy/infer", &bert_request("INT64", 0..2));
    assert_eq!(r.status, 200);
    // A plan that does not load leaves the server not ready until it is fixed.
    std::fs::write(dir.join("broken.fff"), b"not a plan").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && server.get("/v2/health/ready").status == 200 {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(server.get("/v2/health/ready").status, 503);
    std::fs::remove_file(dir.join("broken.fff")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && server.get("/v2/health/ready").status != 200 {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(server.get("/v2/health/ready").status, 200);
    server.terminate();
    assert_eq!(server.wait(Duration::from_secs(10)), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_request_over_the_timeout_gets_504_and_the_server_goes_on() {
    let server = Server::start(&["--request-timeout-ms", "1", "--threads", "1"]);
    let r = server.post_json(INFER, &heavy_request(16, 64));
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.json()["error"].is_string());
    let samples = parse_metrics(&server.get("/metrics").text());
    let timeout = [("model", "bert"), ("outcome", "timeout")];
    assert_eq!(
        sample(&samples, "fffserve_requests_total", &timeout),
        Some(1.0)
    );
    assert_eq!(server.get("/v2/health/live").status, 200);
}

/// Sends `body` in the background and returns once the server has it queued or running, so that
/// the requests sent next queue behind it.
fn keep_busy(server: &Server, body: Value) -> std::thread::JoinHandle<Reply> {
    let port = server.port;
    let busy =
        std::thread::spawn(move || request(port, "POST", INFER, &[], body.to_string().as_bytes()));
    std::thread::sleep(Duration::from_millis(30));
    busy
}

/// Model runs (batch-size observations) and rows run, for one model.
fn runs_and_rows(server: &Server, model: &str) -> (f64, f64) {
    let samples = parse_metrics(&server.get("/metrics").text());
    let m = [("model", model)];
    (
        sample(&samples, "fffserve_batch_size_count", &m).unwrap_or(0.0),
        sample(&samples, "fffserve_batch_size_sum", &m).unwrap_or(0.0),
    )
}

#[test]
fn requests_queued_behind_a_run_are_batched() {
    let server = Server::start(&["--threads", "1", "--max-queue-delay-ms", "200"]);
    let busy = keep_busy(&server, heavy_request(128, 64));
    let port = server.port;
    let handles: Vec<_> = (0..6)
        .map(|i| {
            std::thread::spawn(move || {
                let body = bert_request("INT64", i % 2..i % 2 + 1);
                request(port, "POST", INFER, &[], body.to_string().as_bytes())
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let r = h.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let got = floats(&output(&r.json(), "pooler_output")["data"]);
        assert!(max_diff(&got, &expected("pooler_output", i % 2..i % 2 + 1)) < 1e-4);
    }
    let busy = busy.join().unwrap();
    assert_eq!(busy.status, 200, "{}", busy.text());
    let (runs, rows) = runs_and_rows(&server, "bert");
    // The heavy request ran alone. The first batch of bert-tiny's plan (whose outputs' first size
    // the plan does not tell) also runs its requests one by one to compare: six more rows.
    assert!(
        rows == 128.0 + 6.0 || rows == 128.0 + 6.0 + 6.0,
        "{rows} rows"
    );
    let samples = parse_metrics(&server.get("/metrics").text());
    let le1 = sample(
        &samples,
        "fffserve_batch_size_bucket",
        &[("model", "bert"), ("le", "1.0")],
    )
    .unwrap();
    assert!(
        runs - le1 >= 2.0,
        "no run of several requests: {runs} runs, {le1} of one row"
    );
}

#[test]
fn text_requests_are_batched() {
    let server = Server::start(&["--threads", "1", "--max-queue-delay-ms", "200"]);
    let texts: Vec<String> =
        serde_json::from_value(read_json(&fixture("text/texts.json"))).unwrap();
    let model = Model::load(repository().join("text.fff")).unwrap();
    let text_request = |t: &[String]| json!({ "inputs": [{ "name": "text", "datatype": "BYTES", "shape": [t.len()], "data": t }] });
    // Many long texts keep the model busy while the small requests queue.
    let long: Vec<String> = (0..64)
        .map(|i| format!("{} {i}", texts.join(" ")))
        .collect();
    let port = server.port;
    let heavy = text_request(&long).to_string();
    let busy = std::thread::spawn(move || {
        request(port, "POST", "/v2/models/text/infer", &[], heavy.as_bytes())
    });
    std::thread::sleep(Duration::from_millis(30));
    let groups: Vec<Vec<String>> = texts.chunks(2).map(<[String]>::to_vec).take(4).collect();
    let handles: Vec<_> = groups
        .iter()
        .map(|g| {
            let body = text_request(g).to_string();
            std::thread::spawn(move || {
                request(port, "POST", "/v2/models/text/infer", &[], body.as_bytes())
            })
        })
        .collect();
    for (g, h) in groups.iter().zip(handles) {
        let r = h.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let got = floats(&output(&r.json(), "embedding")["data"]);
        let refs: Vec<&str> = g.iter().map(String::as_str).collect();
        let alone = model.embed(&refs, &Default::default()).unwrap();
        let d = max_diff(&got, &alone.iter().copied().collect::<Vec<_>>());
        assert!(d < 1e-5, "{d} from the texts embedded alone");
    }
    let busy = busy.join().unwrap();
    assert_eq!(busy.status, 200, "{}", busy.text());
    let (runs, rows) = runs_and_rows(&server, "text");
    let small: usize = groups.iter().map(Vec::len).sum();
    assert_eq!(rows, (long.len() + small) as f64);
    assert!(runs < 1.0 + groups.len() as f64, "{runs} runs: no batch");
}

#[test]
fn a_bad_request_in_a_batch_fails_alone() {
    // The requests below queue behind a heavy one and meet in one batch.
    let server = Server::start(&["--threads", "1", "--max-queue-delay-ms", "200"]);
    let busy = keep_busy(&server, heavy_request(128, 64));
    let port = server.port;
    let mut bad = bert_request("INT64", 0..1);
    bad["inputs"][0]["data"][0] = json!(100000); // past the embedding table: the run fails
    let handles: Vec<_> = (0..5)
        .map(|i| {
            let body = if i == 2 {
                bad.clone()
            } else {
                bert_request("INT64", 0..1)
            };
            std::thread::spawn(move || {
                request(port, "POST", INFER, &[], body.to_string().as_bytes())
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let r = h.join().unwrap();
        if i == 2 {
            assert_eq!(r.status, 400, "{}", r.text());
        } else {
            assert_eq!(r.status, 200, "{}", r.text());
            let got = floats(&output(&r.json(), "pooler_output")["data"]);
            assert!(max_diff(&got, &expected("pooler_output", 0..1)) < 1e-4);
        }
    }
    let busy = busy.join().unwrap();
    assert_eq!(busy.status, 200, "{}", busy.text());
}
