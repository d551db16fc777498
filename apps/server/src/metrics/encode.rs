//! Helpers for collectors: one metric family per call, with its help text and unit.

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// The result of encoding.
pub type Result = std::result::Result<(), std::fmt::Error>;

/// A counter without labels. `name` has neither the unit nor `_total`: the encoder adds them.
pub fn counter(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    value: u64,
) -> Result {
    let c = ConstCounter::new(value);
    c.encode(e.encode_descriptor(name, help, unit.as_ref(), c.metric_type())?)
}

/// A gauge without labels. `name` has no unit: the encoder adds it.
pub fn gauge(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    value: i64,
) -> Result {
    let g = ConstGauge::new(value);
    g.encode(e.encode_descriptor(name, help, unit.as_ref(), g.metric_type())?)
}

/// A counter with one label: one series per `(label value, count)`.
pub fn counters<'a>(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, u64)>,
) -> Result {
    let mut m = e.encode_descriptor(name, help, unit.as_ref(), MetricType::Counter)?;
    for (value, count) in values {
        let labels = [(label, value)];
        m.encode_family(&labels)?
            .encode_counter::<NoLabelSet, u64, u64>(&count, None)?;
    }
    Ok(())
}

/// A gauge with one label: one series per `(label value, value)`.
pub fn gauges<'a>(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, i64)>,
) -> Result {
    let mut m = e.encode_descriptor(name, help, unit.as_ref(), MetricType::Gauge)?;
    for (value, v) in values {
        let labels = [(label, value)];
        m.encode_family(&labels)?.encode_gauge(&v)?;
    }
    Ok(())
}

/// One histogram's values: per-bucket counts (not cumulative) with their upper bounds, the last
/// one `f64::INFINITY`, and the sum of what was observed.
#[derive(Clone, Debug, Default)]
pub struct HistogramValues {
    /// `(upper bound, count in this bucket)`.
    pub buckets: Vec<(f64, u64)>,
    /// The sum of the observed values.
    pub sum: f64,
}

/// A histogram with one label: one series per `(label value, histogram)`.
pub fn histograms<'a>(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, &'a HistogramValues)>,
) -> Result {
    let mut m = e.encode_descriptor(name, help, unit.as_ref(), MetricType::Histogram)?;
    for (value, h) in values {
        let labels = [(label, value)];
        let count = h.buckets.iter().map(|(_, n)| n).sum();
        m.encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(h.sum, count, &h.buckets, None)?;
    }
    Ok(())
}
