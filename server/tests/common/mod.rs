//! Shared by the server's tests: plans compiled once into a temporary model repository, the real
//! `fffserve` binary started on a free port, and a small HTTP/1.1 client over `TcpStream` (which
//! also sends bodies byte by byte, as a slow client does).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn fixture(name: &str) -> PathBuf {
    root().join("models/fixtures").join(name)
}

pub fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A model repository holding `bert.fff` (bert-tiny) and `text.fff` (bert-tiny with the fixtures'
/// tokenizer, mean pooling by default), compiled once per test process.
pub fn repository() -> &'static Path {
    static REPO: OnceLock<PathBuf> = OnceLock::new();
    REPO.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("fffserve-tests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let onnx = std::fs::read(fixture("bert-tiny.onnx")).unwrap();
        let plain =
            fff_compiler::compile_to_plan_bytes(&onnx, &fff_compiler::Options::default()).unwrap();
        std::fs::write(dir.join("bert.fff"), plain).unwrap();
        let options = fff_compiler::Options {
            text: Some(fff_compiler::text::TextOptions {
                tokenizer: fixture("text/tokenizer.json"),
                pooling: Some(fff_runtime::text::Pooling::Mean),
                ..Default::default()
            }),
            ..Default::default()
        };
        let text = fff_compiler::compile_to_plan_bytes(&onnx, &options).unwrap();
        std::fs::write(dir.join("text.fff"), text).unwrap();
        dir
    })
}

/// A copy of the repository in a folder of its own (for tests that change it).
pub fn private_repository(tag: &str) -> PathBuf {
    let src = repository();
    let dir = std::env::temp_dir().join(format!("fffserve-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["bert.fff", "text.fff"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    dir
}

pub struct Server {
    pub child: Child,
    pub port: u16,
    pub stderr: Arc<Mutex<String>>,
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        Server::start_in(repository(), extra)
    }

    pub fn start_in(repo: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fffserve"))
            .arg("--model-repository")
            .arg(repo)
            .args(["--host", "127.0.0.1", "--http-port", "0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("fffserve starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap());
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut port = None;
        let mut line = String::new();
        while port.is_none() {
            line.clear();
            if lines.read_line(&mut line).unwrap() == 0 {
                let _ = child.kill();
                panic!(
                    "fffserve ended before listening: {}",
                    stderr.lock().unwrap()
                );
            }
            stderr.lock().unwrap().push_str(&line);
            if let Some(rest) = line.trim().strip_prefix("fffserve listening on http://") {
                port = Some(rest.rsplit(':').next().unwrap().parse().unwrap());
            }
        }
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            while lines.read_line(&mut line).unwrap_or(0) > 0 {
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        Server {
            child,
            port: port.unwrap(),
            stderr,
        }
    }

    pub fn get(&self, path: &str) -> Reply {
        request(self.port, "GET", path, &[], b"")
    }

    pub fn post_json(&self, path: &str, body: &Value) -> Reply {
        request(
            self.port,
            "POST",
            path,
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
    }

    /// Waits for the process to end, at most `limit`; its exit code.
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body[..self.body.len().min(300)])
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn head(method: &str, path: &str, headers: &[(&str, &str)], len: usize) -> String {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {len}\r\n\r\n"));
    head
}

pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut all = head(method, path, headers, body.len()).into_bytes();
    all.extend_from_slice(body);
    // The server may answer (413) and close before reading everything.
    let _ = stream.write_all(&all);
    read_reply(stream)
}

/// Sends the head, then the body one byte at a time with `pause` between bytes.
pub fn slow_request(
    port: u16,
    path: &str,
    body: &[u8],
    pause: Duration,
    after_first_byte: impl FnOnce(),
) -> Reply {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream.set_nodelay(true).unwrap();
    let h = head(
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.len(),
    );
    stream.write_all(h.as_bytes()).unwrap();
    let mut hook = Some(after_first_byte);
    for b in body {
        stream.write_all(&[*b]).unwrap();
        if let Some(f) = hook.take() {
            f();
        }
        std::thread::sleep(pause);
    }
    read_reply(stream)
}

fn read_reply(mut stream: TcpStream) -> Reply {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let n = usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap().trim(), 16)
                .unwrap();
            rest = &rest[eol + 2..];
            if n == 0 {
                break;
            }
            out.extend_from_slice(&rest[..n]);
            rest = &rest[n + 2..];
        }
        body = out;
    }
    Reply {
        status,
        headers,
        body,
    }
}

/// bert-tiny's fixture inputs as a v2 request (`datatype` INT64 or INT32), rows `rows` only.
pub fn bert_request(datatype: &str, rows: std::ops::Range<usize>) -> Value {
    let input = read_json(&fixture("bert-tiny.input.json"));
    let mut inputs = Vec::new();
    for name in ["input_ids", "attention_mask", "token_type_ids"] {
        let all = input[name].as_array().unwrap();
        let picked: Vec<Value> = all[rows.clone()].to_vec();
        let width = picked[0].as_array().unwrap().len();
        let flat: Vec<Value> = picked
            .iter()
            .flat_map(|r| r.as_array().unwrap().clone())
            .collect();
        inputs.push(serde_json::json!({
            "name": name,
            "datatype": datatype,
            "shape": [picked.len(), width],
            "data": flat,
        }));
    }
    serde_json::json!({ "inputs": inputs })
}

/// The flat f32 values of a JSON output's `data`, or of nested lists.
pub fn floats(v: &Value) -> Vec<f32> {
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<f32>) {
        match v {
            Value::Array(items) => items.iter().for_each(|x| walk(x, out)),
            Value::Number(n) => out.push(n.as_f64().unwrap() as f32),
            other => panic!("not a number: {other}"),
        }
    }
    walk(v, &mut out);
    out
}

pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The output `name` of a v2 JSON response.
pub fn output<'a>(response: &'a Value, name: &str) -> &'a Value {
    response["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("no output {name} in {response}"))
}

/// The expected bert-tiny output `name`, rows `rows`, flat.
pub fn expected(name: &str, rows: std::ops::Range<usize>) -> Vec<f32> {
    let e = read_json(&fixture("bert-tiny.expected.json"));
    let all = e[name].as_array().unwrap();
    floats(&Value::Array(all[rows].to_vec()))
}
