//! Reading metrics: the [`Source`] seam the agent and the executor query through, and
//! its implementation for a Prometheus-API store ([`PromSource`]: Prometheus, Thanos,
//! Mimir, VictoriaMetrics). Instant queries for the live loop, range queries for
//! history. Knows nothing of baselines.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_http_query::response::Data;
use prometheus_http_query::Client;

use crate::labels::Labels;

/// Why a query gave no usable data. Variants double as metric labels via [`SourceError::kind`].
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The configured URL is unusable.
    #[error("bad prometheus url: {0}")]
    Url(String),
    /// Connection refused, timeout, or an answer that is not the Prometheus API's JSON.
    #[error("request failed: {0}")]
    Request(String),
    /// Prometheus answered with an API error (bad PromQL, overload, ...).
    #[error("prometheus error: {0}")]
    Api(String),
    /// A well-formed answer of the wrong shape (e.g. a range vector from an instant query).
    #[error("unexpected result: {0}")]
    Unexpected(String),
}

impl SourceError {
    /// A short, stable name for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceError::Url(_) => "url",
            SourceError::Request(_) => "request",
            SourceError::Api(_) => "api",
            SourceError::Unexpected(_) => "unexpected",
        }
    }
}

impl From<prometheus_http_query::Error> for SourceError {
    fn from(e: prometheus_http_query::Error) -> Self {
        use prometheus_http_query::Error as E;
        match e {
            E::Prometheus(p) => SourceError::Api(p.to_string()),
            E::ParseUrl(u) => SourceError::Url(u.to_string()),
            other => {
                // Keep the cause chain: reqwest's top-level message alone says little.
                let mut msg = other.to_string();
                let mut src = std::error::Error::source(&other);
                while let Some(s) = src {
                    msg.push_str(": ");
                    msg.push_str(&s.to_string());
                    src = s.source();
                }
                SourceError::Request(msg)
            }
        }
    }
}

/// One sample of one series.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// The series' labels (including `__name__` when the query keeps it).
    pub labels: Labels,
    /// Unix time in seconds.
    pub t: f64,
    /// The value; may be NaN or infinite, which callers treat as missing.
    pub value: f64,
}

/// One series' history.
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    /// The series' labels.
    pub labels: Labels,
    /// `(unix seconds, value)`, oldest first.
    pub samples: Vec<(f64, f64)>,
}

/// A boxed, sendable future, so that [`Source`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where metrics come from: a Prometheus-API store in production, a scripted fake in
/// tests (as Prometheus' rule manager injects its `QueryFunc`).
pub trait Source: Send + Sync + 'static {
    /// Evaluates an instant query at unix time `at` (now when `None`).
    fn instant_at<'a>(
        &'a self,
        query: &'a str,
        at: Option<f64>,
    ) -> BoxFuture<'a, Result<Vec<Point>, SourceError>>;

    /// Evaluates a range query over `[end - span, end]` at `step` resolution.
    fn range<'a>(
        &'a self,
        query: &'a str,
        end: f64,
        span: Duration,
        step: Duration,
    ) -> BoxFuture<'a, Result<Vec<History>, SourceError>>;

    /// Evaluates an instant query now.
    fn instant<'a>(&'a self, query: &'a str) -> BoxFuture<'a, Result<Vec<Point>, SourceError>> {
        self.instant_at(query, None)
    }
}

impl Source for PromSource {
    fn instant_at<'a>(
        &'a self,
        query: &'a str,
        at: Option<f64>,
    ) -> BoxFuture<'a, Result<Vec<Point>, SourceError>> {
        Box::pin(PromSource::instant_at(self, query, at))
    }

    fn range<'a>(
        &'a self,
        query: &'a str,
        end: f64,
        span: Duration,
        step: Duration,
    ) -> BoxFuture<'a, Result<Vec<History>, SourceError>> {
        Box::pin(PromSource::range(self, query, end, span, step))
    }
}

/// A Prometheus HTTP API client.
#[derive(Clone)]
pub struct PromSource {
    client: Client,
}

impl std::fmt::Debug for PromSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromSource")
            .field("url", &self.client.base_url().as_str())
            .finish()
    }
}

/// Seconds since the epoch, as Prometheus timestamps are.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Unix seconds as RFC 3339 with milliseconds (the epoch for an impossible time).
pub fn rfc3339(unix: f64) -> String {
    let t = Duration::try_from_secs_f64(unix)
        .ok()
        .and_then(|d| UNIX_EPOCH.checked_add(d))
        .unwrap_or(UNIX_EPOCH);
    humantime::format_rfc3339_millis(t).to_string()
}

impl PromSource {
    /// A client for `url` whose every request gives up after `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, SourceError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .build()
            .map_err(|e| SourceError::Request(e.to_string()))?;
        let client = Client::from(http, url).map_err(SourceError::from)?;
        Ok(PromSource { client })
    }

    /// Evaluates an instant query at unix time `at` (now when `None`).
    pub async fn instant_at(
        &self,
        query: &str,
        at: Option<f64>,
    ) -> Result<Vec<Point>, SourceError> {
        let mut q = self.client.query(query);
        if let Some(t) = at {
            q = q.at(t as i64);
        }
        let res = q.get().await?;
        let (data, _) = res.into_inner();
        match data {
            Data::Vector(v) => Ok(v
                .into_iter()
                .map(|iv| {
                    let (metric, sample) = iv.into_inner();
                    Point {
                        labels: Labels::from_pairs(metric),
                        t: sample.timestamp(),
                        value: sample.value(),
                    }
                })
                .collect()),
            Data::Scalar(s) => Ok(vec![Point {
                labels: Labels::default(),
                t: s.timestamp(),
                value: s.value(),
            }]),
            Data::Matrix(_) => Err(SourceError::Unexpected(
                "the query returns a range vector; signals need an instant vector or scalar".into(),
            )),
        }
    }

    /// Evaluates a range query over `[end - span, end]` at `step` resolution.
    pub async fn range(
        &self,
        query: &str,
        end: f64,
        span: Duration,
        step: Duration,
    ) -> Result<Vec<History>, SourceError> {
        let end_s = end as i64;
        let start = end_s - span.as_secs() as i64;
        let res = self
            .client
            .query_range(query, start, end_s, step.as_secs_f64().max(1.0))
            .get()
            .await?;
        let (data, _) = res.into_inner();
        match data {
            Data::Matrix(m) => Ok(m
                .into_iter()
                .map(|rv| {
                    let (metric, samples) = rv.into_inner();
                    History {
                        labels: Labels::from_pairs(metric),
                        samples: samples.iter().map(|s| (s.timestamp(), s.value())).collect(),
                    }
                })
                .collect()),
            _ => Err(SourceError::Unexpected(
                "a range query did not return a matrix".into(),
            )),
        }
    }
}
