//! Text in, vectors out: the plan's tokenizer against the Hugging Face `tokenizers` package's ids,
//! and embeddings against ONNX Runtime's token vectors pooled as sentence-transformers pools
//! (`models/fixtures/text/`, written by `make_text_fixtures.py`); the CLI's text paths and errors.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::bin;
use fff_compiler::text::TextOptions;
use fff_compiler::Options;
use fff_runtime::text::{EmbedOptions, Pooling, TextTokenizer};
use fff_runtime::Model;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/fixtures")
}

fn text_dir() -> PathBuf {
    fixtures().join("text")
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(text_dir().join("expected.json")).unwrap())
        .unwrap()
}

fn texts() -> Vec<String> {
    serde_json::from_str(&std::fs::read_to_string(text_dir().join("texts.json")).unwrap()).unwrap()
}

fn ints(v: &Value) -> Vec<Vec<i64>> {
    serde_json::from_value(v.clone()).unwrap()
}

fn floats(v: &Value) -> Vec<Vec<f64>> {
    serde_json::from_value(v.clone()).unwrap()
}

/// bert-tiny compiled with `tokenizer` (a file or folder) and the given text options.
fn plan_with(
    tokenizer: &Path,
    edit: impl FnOnce(&mut TextOptions),
) -> fff_compiler::Result<Vec<u8>> {
    let mut text = TextOptions {
        tokenizer: tokenizer.to_path_buf(),
        ..TextOptions::default()
    };
    edit(&mut text);
    let options = Options {
        text: Some(text),
        ..Options::default()
    };
    let onnx = std::fs::read(fixtures().join("bert-tiny.onnx")).unwrap();
    fff_compiler::compile_to_plan_bytes(&onnx, &options)
}

fn model_with_tokenizer() -> Model {
    let plan = plan_with(&text_dir().join("tokenizer.json"), |_| {}).unwrap();
    Model::from_bytes(&plan).unwrap()
}

fn assert_rows_close(what: &str, got: &ndarray::Array2<f32>, want: &[Vec<f64>], tol: f64) {
    assert_eq!(got.nrows(), want.len(), "{what}: rows");
    for (r, (g, w)) in got.rows().into_iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "{what}: width");
        let diff = g
            .iter()
            .zip(w)
            .map(|(&a, &b)| (f64::from(a) - b).abs())
            .fold(0.0, f64::max);
        assert!(diff <= tol, "{what}: row {r} differs by {diff}");
    }
}

#[test]
fn ids_equal_the_hugging_face_tokenizers_package() {
    let json = std::fs::read_to_string(text_dir().join("tokenizer.json")).unwrap();
    let want = expected();
    let texts = texts();
    let whole = TextTokenizer::new(&json, 100_000).unwrap();
    let cut = TextTokenizer::new(&json, 64).unwrap();
    for (i, text) in texts.iter().enumerate() {
        let got = whole.encode(&[text]).unwrap();
        assert_eq!(
            got.ids.row(0).to_vec(),
            ints(&want["ids"])[i],
            "text {i}: {text:?}"
        );
        let got = cut.encode(&[text]).unwrap();
        assert_eq!(
            got.ids.row(0).to_vec(),
            ints(&want["ids_truncated_64"])[i],
            "text {i} truncated"
        );
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let batch = cut.encode(&refs).unwrap();
    let b = &want["batch"];
    assert_eq!(
        batch
            .ids
            .outer_iter()
            .map(|r| r.to_vec())
            .collect::<Vec<_>>(),
        ints(&b["input_ids"])
    );
    assert_eq!(
        batch
            .mask
            .outer_iter()
            .map(|r| r.to_vec())
            .collect::<Vec<_>>(),
        ints(&b["attention_mask"])
    );
    assert_eq!(
        batch
            .type_ids
            .outer_iter()
            .map(|r| r.to_vec())
            .collect::<Vec<_>>(),
        ints(&b["token_type_ids"])
    );
    let long = ints(&want["ids"])
        .iter()
        .position(|ids| ids.len() > 64)
        .unwrap();
    assert_eq!(batch.truncated, [long], "only the long text is cut");
}

#[test]
fn embeddings_equal_onnx_runtime_pooled_as_sentence_transformers_pools() {
    let model = model_with_tokenizer();
    let config = model.text_config().unwrap();
    assert_eq!(config.max_length, 64, "bert-tiny's position table");
    assert_eq!(config.pooling, None);
    let texts = texts();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let want = &expected()["embeddings"];
    for pooling in [Pooling::Cls, Pooling::Mean, Pooling::Max] {
        for normalize in [false, true] {
            let options = EmbedOptions {
                pooling: Some(pooling),
                normalize: Some(normalize),
                ..EmbedOptions::default()
            };
            let got = model.embed(&refs, &options).unwrap();
            let key = format!("{pooling}{}", if normalize { "_normalized" } else { "" });
            assert_rows_close(&key, &got, &floats(&want[&key]), 1e-4);
        }
    }
    // One text alone is embedded as in the batch: padding changes nothing.
    let options = EmbedOptions {
        pooling: Some(Pooling::Mean),
        ..EmbedOptions::default()
    };
    let alone = model.embed(&refs[..1], &options).unwrap();
    assert_rows_close("alone", &alone, &floats(&want["mean"])[..1], 1e-4);
    // With no pooling stored or asked for, token vectors are not one vector per text.
    let err = model.embed(&refs, &EmbedOptions::default()).unwrap_err();
    assert!(err.to_string().contains("pooling"), "{err}");
}

#[test]
fn a_sentence_transformers_folder_sets_the_defaults() {
    let plan = plan_with(&text_dir().join("st-bert-tiny"), |_| {}).unwrap();
    let model = Model::from_bytes(&plan).unwrap();
    let config = model.text_config().unwrap();
    assert_eq!(config.max_length, 48);
    assert_eq!(config.pooling, Some(Pooling::Mean));
    assert!(config.normalize);
    let texts = texts();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let want = &expected()["st_folder"];
    let tokens = model.tokenize(&refs, &EmbedOptions::default()).unwrap();
    assert_eq!(
        tokens
            .ids
            .outer_iter()
            .map(|r| r.to_vec())
            .collect::<Vec<_>>(),
        ints(&want["input_ids"])
    );
    let got = model.embed(&refs, &EmbedOptions::default()).unwrap();
    assert_rows_close(
        "folder defaults",
        &got,
        &floats(&want["mean_normalized_48"]),
        1e-4,
    );
    // The caller's options win over the plan's.
    let options = EmbedOptions {
        pooling: Some(Pooling::Cls),
        normalize: Some(false),
        max_length: Some(64),
        ..EmbedOptions::default()
    };
    let cls = model.embed(&refs, &options).unwrap();
    assert_rows_close(
        "options win",
        &cls,
        &floats(&expected()["embeddings"]["cls"]),
        1e-4,
    );
    let too_long = EmbedOptions {
        max_length: Some(65),
        ..EmbedOptions::default()
    };
    let err = model.embed(&refs, &too_long).unwrap_err();
    assert!(err.to_string().contains("64 positions"), "{err}");
}

#[test]
fn tokenizers_that_do_not_fit_are_refused_at_compile_time() {
    let dir = std::env::temp_dir().join(format!("fff-text-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A vocabulary past the embedding table's 512 rows.
    let mut tokenizer: Value =
        serde_json::from_str(&std::fs::read_to_string(text_dir().join("tokenizer.json")).unwrap())
            .unwrap();
    let vocab = tokenizer["model"]["vocab"].as_object_mut().unwrap();
    for i in 0..100 {
        let id = vocab.len();
        vocab.insert(format!("extra{i}"), Value::from(id));
    }
    let big = dir.join("big.json");
    std::fs::write(&big, tokenizer.to_string()).unwrap();
    let err = plan_with(&big, |_| {}).unwrap_err().to_string();
    assert!(
        err.contains("512 rows") && err.contains("not this model's tokenizer"),
        "{err}"
    );
    let broken = dir.join("broken.json");
    std::fs::write(&broken, "{\"model\": 3}").unwrap();
    let err = plan_with(&broken, |_| {}).unwrap_err().to_string();
    assert!(err.contains("does not parse"), "{err}");
    let err = plan_with(&dir.join("missing.json"), |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.json"), "{err}");
    let err = plan_with(&text_dir().join("tokenizer.json"), |t| {
        t.max_length = Some(65)
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("64 positions"), "{err}");
    let err = plan_with(&text_dir().join("tokenizer.json"), |t| {
        t.input_map = vec![("ids".into(), "nope".into())]
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("nope"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn empty_inputs_are_errors_and_empty_strings_are_special_tokens() {
    let model = model_with_tokenizer();
    let options = EmbedOptions {
        pooling: Some(Pooling::Mean),
        ..EmbedOptions::default()
    };
    let err = model.embed(&[], &options).unwrap_err();
    assert!(err.to_string().contains("no texts"), "{err}");
    let tokens = model.tokenize(&[""], &options).unwrap();
    assert_eq!(
        tokens.ids.row(0).to_vec(),
        ints(&expected()["ids"]).last().unwrap().clone()
    );
    assert_eq!(model.embed(&[""], &options).unwrap().nrows(), 1);
    let plain = common::compile(&fixtures().join("bert-tiny.onnx"));
    let err = plain.embed(&["a"], &options).unwrap_err();
    assert!(err.to_string().contains("no tokenizer"), "{err}");
}

// ---- the CLI ----

struct Plans {
    dir: PathBuf,
}

impl Plans {
    fn new(tag: &str) -> Plans {
        let dir = std::env::temp_dir().join(format!("fff-text-cli-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Plans { dir }
    }

    fn compile(&self, name: &str, extra: &[&str]) -> PathBuf {
        let out = self.dir.join(name);
        let status = Command::new(bin("fffc"))
            .arg("compile")
            .arg(fixtures().join("bert-tiny.onnx"))
            .arg("-o")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
        out
    }
}

impl Drop for Plans {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fffrun(args: &[&std::ffi::OsStr]) -> (bool, Value, String) {
    let out = Command::new(bin("fffrun")).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (out.status.success(), json, stderr)
}

#[test]
fn fffrun_embeds_text_from_flags_files_and_v2_requests() {
    let plans = Plans::new("run");
    let tokenizer = text_dir().join("tokenizer.json");
    let plan = plans.compile("bt.fff", &["--tokenizer", tokenizer.to_str().unwrap()]);
    let texts = texts();
    let want = floats(&expected()["embeddings"]["mean_normalized"]);
    let mut args: Vec<std::ffi::OsString> = vec![plan.clone().into()];
    for t in &texts {
        args.push("--text".into());
        args.push(t.into());
    }
    args.extend(["--pooling".into(), "mean".into(), "--normalize".into()]);
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let (ok, json, stderr) = fffrun(&refs);
    assert!(ok, "{stderr}");
    let got: Vec<Vec<f64>> = floats(&json["embedding"]);
    let got = ndarray::Array2::from_shape_fn((got.len(), got[0].len()), |(r, c)| got[r][c] as f32);
    assert_rows_close("--text", &got, &want, 1e-4);
    assert!(
        stderr.contains("truncated") && stderr.contains("64 tokens"),
        "{stderr}"
    );

    // The same texts in a file, plain and as a v2 BYTES request.
    let file = plans.dir.join("texts.json");
    std::fs::write(&file, serde_json::json!({ "text": texts }).to_string()).unwrap();
    let (ok, json, stderr) = fffrun(&[
        plan.as_os_str(),
        file.as_os_str(),
        "--pooling".as_ref(),
        "cls".as_ref(),
    ]);
    assert!(ok, "{stderr}");
    let got = floats(&json["embedding"]);
    let got = ndarray::Array2::from_shape_fn((got.len(), 64), |(r, c)| got[r][c] as f32);
    assert_rows_close(
        "file",
        &got,
        &floats(&expected()["embeddings"]["cls"]),
        1e-4,
    );
    let v2 = plans.dir.join("v2.json");
    let request = serde_json::json!({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [texts.len()], "data": texts}]});
    std::fs::write(&v2, request.to_string()).unwrap();
    let (ok, json, stderr) = fffrun(&[
        plan.as_os_str(),
        v2.as_os_str(),
        "--pooling".as_ref(),
        "max".as_ref(),
    ]);
    assert!(ok, "{stderr}");
    let out = &json["outputs"][0];
    assert_eq!(out["name"], "embedding");
    assert_eq!(out["datatype"], "FP32");
    assert_eq!(out["shape"], serde_json::json!([texts.len(), 64]));
    let flat: Vec<f64> = serde_json::from_value(out["data"].clone()).unwrap();
    let got = ndarray::Array2::from_shape_fn((texts.len(), 64), |(r, c)| flat[r * 64 + c] as f32);
    assert_rows_close("v2", &got, &floats(&expected()["embeddings"]["max"]), 1e-4);

    // No pooling: the model's outputs, as for token ids.
    let (ok, json, stderr) = fffrun(&[plan.as_os_str(), "--text".as_ref(), "hello".as_ref()]);
    assert!(ok, "{stderr}");
    assert!(
        json.get(expected()["token_output"].as_str().unwrap())
            .is_some(),
        "{json}"
    );

    // A folder's defaults apply with no options.
    let folder = text_dir().join("st-bert-tiny");
    let st = plans.compile("st.fff", &["--tokenizer", folder.to_str().unwrap()]);
    let mut args: Vec<std::ffi::OsString> = vec![st.into()];
    for t in &texts {
        args.push("--text".into());
        args.push(t.into());
    }
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let (ok, json, stderr) = fffrun(&refs);
    assert!(ok, "{stderr}");
    let got = floats(&json["embedding"]);
    let got = ndarray::Array2::from_shape_fn((got.len(), 64), |(r, c)| got[r][c] as f32);
    assert_rows_close(
        "folder",
        &got,
        &floats(&expected()["st_folder"]["mean_normalized_48"]),
        1e-4,
    );
    assert!(stderr.contains("max_seq_length"), "{stderr}");

    let inspect = Command::new(bin("fffc"))
        .arg("inspect")
        .arg(plans.dir.join("st.fff"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(
        text.contains("pooling mean") && text.contains("max length 48"),
        "{text}"
    );
    let inspect = Command::new(bin("fffc"))
        .args(["inspect", "--json"])
        .arg(plans.dir.join("st.fff"))
        .output()
        .unwrap();
    let json: Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(json["text"]["pooling"], "mean");
    assert_eq!(json["text"]["normalize"], true);
    assert_eq!(json["text"]["max_length"], 48);
    assert_eq!(json["text"]["roles"]["ids"], "input_ids");
    assert_eq!(json["outputs"][0]["dtype"], "float32");
}

#[test]
fn fffrun_text_errors_name_the_problem() {
    let plans = Plans::new("errors");
    let tokenizer = text_dir().join("tokenizer.json");
    let plan = plans.compile("bt.fff", &["--tokenizer", tokenizer.to_str().unwrap()]);
    let plain = plans.compile("plain.fff", &[]);
    let cases: Vec<(Vec<std::ffi::OsString>, &str)> = vec![
        (
            vec![plain.clone().into(), "--text".into(), "hi".into()],
            "has no tokenizer",
        ),
        (
            vec![
                plan.clone().into(),
                "--text".into(),
                "hi".into(),
                "--pooling".into(),
                "sum".into(),
            ],
            "unknown pooling",
        ),
        (
            vec![
                plan.clone().into(),
                "--text".into(),
                "hi".into(),
                "--input-map".into(),
                "ids=x".into(),
            ],
            "'x'",
        ),
        (
            vec![
                plan.clone().into(),
                "--text".into(),
                "hi".into(),
                "--max-length".into(),
                "999".into(),
            ],
            "64 positions",
        ),
    ];
    for (args, want) in cases {
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let (ok, _, stderr) = fffrun(&refs);
        assert!(!ok && stderr.contains(want), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let files: [(&str, &[u8], &str); 4] = [
        ("empty.json", br#"{"text": []}"#, "no texts"),
        ("numbers.json", br#"{"text": [1, 2]}"#, "not a string"),
        (
            "surrogate.json",
            br#"{"text": ["\udc00"]}"#,
            "not valid JSON",
        ),
        (
            "latin1.json",
            b"{\"text\": [\"caf\xe9\"]}",
            "not valid JSON",
        ),
    ];
    for (name, content, want) in files {
        let path = plans.dir.join(name);
        std::fs::write(&path, content).unwrap();
        let (ok, _, stderr) = fffrun(&[plan.as_os_str(), path.as_os_str()]);
        assert!(!ok && stderr.contains(want), "{name}: {stderr}");
    }
    let path = plans.dir.join("empty.json");
    let (ok, _, stderr) = fffrun(&[plain.as_os_str(), path.as_os_str()]);
    assert!(!ok, "{stderr}");
    let bad = plans.dir.join("bad-tokenizer.json");
    std::fs::write(&bad, "not json").unwrap();
    let out = Command::new(bin("fffc"))
        .arg("compile")
        .arg(fixtures().join("bert-tiny.onnx"))
        .arg("-o")
        .arg(plans.dir.join("x.fff"))
        .arg("--tokenizer")
        .arg(&bad)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("does not parse"),
        "{stderr}"
    );
}
