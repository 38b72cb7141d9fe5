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
    pub queue_wait: HistogramFamily<ModelLabel>,
}

/// One model's share of the metrics, for its batcher.
#[derive(Clone)]
pub struct ModelMetrics {
    pub queue_depth: Gauge,
    pub batch_size: Histogram,
    pub queue_wait: Histogram,
}

fn latency_histogram() -> Histogram {
    // 0.25 ms to about 8 s.
    Histogram::new(exponential_buckets(0.00025, 2.0, 16))
}

fn wait_histogram() -> Histogram {
    // 50 µs to about 1.6 s.
    Histogram::new(exponential_buckets(0.00005, 2.0, 16))
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
        let queue_wait: HistogramFamily<ModelLabel> = Family::new_with_constructor(wait_histogram);
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
        registry.register(
            "fffserve_queue_wait_seconds",
            "Time requests wait between their arrival in the queue and the start of their run",
            queue_wait.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            queue_depth,
            batch_size,
            queue_wait,
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

    pub fn for_model(&self, model: &str) -> ModelMetrics {
        let label = ModelLabel {
            model: model.to_string(),
        };
        ModelMetrics {
            queue_depth: self.queue_depth.get_or_create_owned(&label),
            batch_size: self.batch_size.get_or_create_owned(&label),
            queue_wait: self.queue_wait.get_or_create_owned(&label),
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
