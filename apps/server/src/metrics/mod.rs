//! Prometheus metrics: `--metrics ADDR` serves them at `http://ADDR/metrics`, on a thread of
//! their own ([`MetricsServer`]).
//!
//! Nothing here is written on the hot path. The servers keep their counters where they are
//! cheap to keep — per worker, in plain stores by the one thread that owns them — and the
//! collectors of this module read and sum them when Prometheus scrapes ([`server`], [`chat`]).
//!
//! # Adding metrics of your own module
//!
//! [`Metrics`] wraps a `prometheus-client` [`Registry`]. A module adds its metrics before the
//! endpoint starts, in one of two ways:
//!
//! - counters it already keeps (per thread, say): implement
//!   [`prometheus_client::collector::Collector`], read them in `encode`, and
//!   [`Metrics::register_collector`] it ([`encode`] has helpers for counters, gauges and
//!   histograms);
//! - events that are not on a hot path (a reconnect, a command's latency): make a
//!   `prometheus-client` `Counter`, `Gauge` or `Histogram`, keep a clone where the event
//!   happens, and register the other clone with [`Metrics::registry`]. Name it
//!   `iocp_<module>_<what>` with its unit (`_seconds`, `_bytes`; counters get `_total` from the
//!   encoder).

pub mod chat;
pub mod encode;
mod http;
pub mod server;

use prometheus_client::collector::Collector;
use prometheus_client::registry::Registry;

pub use http::MetricsServer;

/// The metrics an endpoint serves: a registry that each module adds to.
#[derive(Debug, Default)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// No metrics yet.
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// The registry, to register metrics that keep their own values (`Counter`, `Histogram`).
    pub fn registry(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Adds a collector: something that reads its values when scraped.
    pub fn register_collector(&mut self, collector: impl Collector) {
        self.registry.register_collector(Box::new(collector));
    }

    /// The metrics in the Prometheus text format (version 0.0.4).
    pub fn encode_prometheus(&self) -> String {
        let mut out = String::new();
        // Writing to a String fails only if a collector fails, and ours do not.
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::error!("encoding the metrics: {e}");
        }
        out
    }

    /// The metrics in the OpenMetrics text format (what Prometheus asks for first).
    pub fn encode_openmetrics(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!("encoding the metrics: {e}");
        }
        out
    }
}
