//! The HTTP endpoints: the Open Inference Protocol v2 REST API and `/metrics`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use crate::batcher::{RunError, Served, Work};
use crate::metrics::Metrics;
use crate::repo::Repo;
use crate::v2;

pub struct AppState {
    pub repo: Arc<Repo>,
    pub metrics: Arc<Metrics>,
    pub request_timeout: Duration,
}

type St = State<Arc<AppState>>;

pub fn router(state: Arc<AppState>, max_request_bytes: usize) -> Router {
    Router::new()
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/versions/{version}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(model_ready),
        )
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer))
        .route("/metrics", get(metrics))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint".to_string()) })
        .layer(DefaultBodyLimit::max(max_request_bytes))
        .with_state(state)
}

fn error(status: StatusCode, message: String) -> Response {
    let body = json!({ "error": message }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn json_response(value: Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

async fn live() -> Response {
    json_response(json!({ "live": true }))
}

async fn ready(State(st): St) -> Response {
    let ready = st.repo.ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({ "ready": ready }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn server_metadata() -> Response {
    json_response(json!({
        "name": "fffserve",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    }))
}

/// The model a path names, if it exists in the version asked for (there is one: "1").
fn find(st: &AppState, params: &HashMap<String, String>) -> Result<Arc<Served>, Response> {
    let name = params.get("name").map(String::as_str).unwrap_or("");
    let not_found = |what: String| error(StatusCode::NOT_FOUND, what);
    let served = st
        .repo
        .get(name)
        .ok_or_else(|| not_found(format!("unknown model '{name}'")))?;
    match params.get("version") {
        Some(v) if v != "1" => Err(not_found(format!(
            "model '{name}' has no version '{v}' (its one version is \"1\")"
        ))),
        _ => Ok(served),
    }
}

async fn model_metadata(State(st): St, Path(params): Path<HashMap<String, String>>) -> Response {
    let served = match find(&st, &params) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let graph = served.model.graph();
    let inputs: Vec<Value> = graph
        .inputs
        .iter()
        .map(|i| {
            json!({
                "name": i.name,
                "datatype": v2::datatype(i.dtype),
                "shape": v2::shape_json(&i.shape),
            })
        })
        .collect();
    let outputs: Vec<Value> = graph
        .outputs
        .iter()
        .map(|o| {
            let mut m = serde_json::Map::new();
            m.insert("name".into(), json!(o.name));
            if let Some(d) = o.dtype {
                m.insert("datatype".into(), json!(v2::datatype(d)));
            }
            if let Some(s) = &o.shape {
                m.insert("shape".into(), v2::shape_json(s));
            }
            Value::Object(m)
        })
        .collect();
    let mut meta = json!({
        "name": served.name,
        "versions": ["1"],
        "platform": "fff",
        "inputs": inputs,
        "outputs": outputs,
    });
    meta["parameters"] = json!({ "dynamic_batching": served.batchable });
    if let Some(text) = served.model.text_config() {
        let (pooling, normalize) = served.model.embed_settings(&Default::default());
        meta["parameters"]["text"] = json!(true);
        meta["parameters"]["max_length"] = json!(text.max_length);
        meta["parameters"]["pooling"] = json!(pooling.name());
        meta["parameters"]["normalize"] = json!(normalize);
    }
    json_response(meta)
}

async fn model_ready(State(st): St, Path(params): Path<HashMap<String, String>>) -> Response {
    match find(&st, &params) {
        Ok(s) => json_response(json!({ "name": s.name, "ready": true })),
        Err(r) => r,
    }
}

async fn metrics(State(st): St) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.metrics.encode(),
    )
        .into_response()
}

async fn infer(
    State(st): St,
    Path(params): Path<HashMap<String, String>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let start = Instant::now();
    let served = match find(&st, &params) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (outcome, response) = infer_on(&st, &served, &headers, body, start).await;
    st.metrics
        .count(&served.name, outcome, start.elapsed().as_secs_f64());
    response
}

async fn infer_on(
    st: &AppState,
    served: &Served,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    start: Instant,
) -> (&'static str, Response) {
    let client = |status, message| ("client_error", error(status, message));
    let body = match body {
        Ok(b) => b,
        Err(rejection) => {
            let status = rejection.status();
            let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "the request body is larger than --max-request-bytes".to_string()
            } else {
                rejection.body_text()
            };
            return client(status, message);
        }
    };
    let header_len = match headers.get("inference-header-content-length") {
        None => None,
        Some(v) => match v.to_str().ok().and_then(|s| s.trim().parse::<usize>().ok()) {
            Some(n) => Some(n),
            None => {
                return client(
                    StatusCode::BAD_REQUEST,
                    "Inference-Header-Content-Length is not a byte count".to_string(),
                )
            }
        },
    };
    let request = match v2::parse(&body, header_len, &served.model) {
        Ok(r) => r,
        Err(message) => return client(StatusCode::BAD_REQUEST, message),
    };
    drop(body);
    let work = match request.payload {
        v2::Payload::Tensors(t) => Work::Tensors(t),
        v2::Payload::Texts {
            texts,
            pooling,
            normalize,
        } => Work::Texts {
            texts,
            pooling,
            normalize,
        },
    };
    let Ok(reply) = served.submit(work) else {
        return (
            "rejected",
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("model '{}' has a full queue; try again later", served.name),
            ),
        );
    };
    let left = st.request_timeout.saturating_sub(start.elapsed());
    let outputs = match tokio::time::timeout(left, reply).await {
        Err(_) => {
            return (
                "timeout",
                error(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "the request took more than {} ms",
                        st.request_timeout.as_millis()
                    ),
                ),
            )
        }
        Ok(Err(_)) => {
            return (
                "server_error",
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the model's batcher stopped".to_string(),
                ),
            )
        }
        Ok(Ok(Err(RunError::Client(m)))) => return client(StatusCode::BAD_REQUEST, m),
        Ok(Ok(Err(RunError::Server(m)))) => {
            return ("server_error", error(StatusCode::INTERNAL_SERVER_ERROR, m))
        }
        Ok(Ok(Ok(outputs))) => outputs,
    };
    // The outputs asked for, in the order asked, each with whether it goes as binary data.
    let (chosen, binary): (Vec<_>, Vec<bool>) = match request.outputs {
        None => outputs
            .into_iter()
            .map(|o| (o, request.binary_default))
            .unzip(),
        Some(list) => {
            let mut outputs: Vec<Option<(String, fff_runtime::Tensor)>> =
                outputs.into_iter().map(Some).collect();
            list.into_iter()
                .filter_map(|(name, bin)| {
                    let slot = outputs
                        .iter_mut()
                        .find(|o| o.as_ref().is_some_and(|(n, _)| *n == name))?;
                    Some((slot.take()?, bin.unwrap_or(request.binary_default)))
                })
                .unzip()
        }
    };
    let response = v2::write_response(&served.name, request.id.as_deref(), &chosen, &binary);
    let mut http = Response::new(axum::body::Body::from(response.body));
    let h = http.headers_mut();
    match response.json_len {
        Some(n) => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            h.insert(
                "inference-header-content-length",
                HeaderValue::from(n as u64),
            );
        }
        None => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
    }
    ("success", http)
}
