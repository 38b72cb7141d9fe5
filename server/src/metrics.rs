//! The server's Prometheus metrics (`GET /metrics`, text format).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabel {
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub model: String,
    /// `success`, `client_error` (4xx), `rejected` (503: queue full), `timeout`, `server_error`.
    pub outcome: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    pub requests: Family<OutcomeLabels, Counter>,
    pub latency: HistogramFamily<ModelLabel>,
    pub queue_depth: Family<ModelLabel, Gauge>,
    pub batch_size: HistogramFamily<ModelLabel>,
}

fn latency_histogram() -> Histogram {
    // 0.25 ms to about 8 s.
    Histogram::new(exponential_buckets(0.00025, 2.0, 16))
}

fn batch_histogram() -> Histogram {
    // 1, 2, 4, ... 1024 rows.
    Histogram::new(exponential_buckets(1.0, 2.0, 11))
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<OutcomeLabels, Counter>::default();
        let latency: HistogramFamily<ModelLabel> = Family::new_with_constructor(latency_histogram);
        let queue_depth = Family::<ModelLabel, Gauge>::default();
        let batch_size: HistogramFamily<ModelLabel> = Family::new_with_constructor(batch_histogram);
        registry.register(
            "fffserve_requests",
            "Inference requests by model and outcome",
            requests.clone(),
        );
        registry.register(
            "fffserve_request_duration_seconds",
            "Inference request latency, from the request's arrival to its answer",
            latency.clone(),
        );
        registry.register(
            "fffserve_queue_depth",
            "Inference requests waiting in a model's queue",
            queue_depth.clone(),
        );
        registry.register(
            "fffserve_batch_size",
            "Rows in each run of a model (requests' batch rows, summed over a dynamic batch)",
            batch_size.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            queue_depth,
            batch_size,
        }
    }

    pub fn count(&self, model: &str, outcome: &str, seconds: f64) {
        self.requests
            .get_or_create(&OutcomeLabels {
                model: model.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&ModelLabel {
                model: model.to_string(),
            })
            .observe(seconds);
    }

    pub fn queue(&self, model: &str) -> Gauge {
        self.queue_depth.get_or_create_owned(&ModelLabel {
            model: model.to_string(),
        })
    }

    pub fn batch(&self, model: &str) -> Histogram {
        self.batch_size.get_or_create_owned(&ModelLabel {
            model: model.to_string(),
        })
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
