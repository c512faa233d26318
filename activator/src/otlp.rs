//! Span export over OTLP/HTTP with JSON encoding (`POST <endpoint>/v1/traces`,
//! `application/json`), with the hyper client already in the tree instead of the
//! OpenTelemetry crates.
//!
//! The request path only [`SpanExporter::record`]s a finished span: a `try_send` into a
//! bounded queue, which drops (and counts) spans when full and never waits. A background
//! task batches them (up to [`BATCH`] spans, or whatever arrived within [`FLUSH_PERIOD`])
//! and posts each batch; a failed post is logged and its spans dropped.

use std::time::{Duration, SystemTime};

use http::{Request, Uri, header};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prometheus::IntCounter;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use zeroscale_admin::process::ErrorChain;

/// Spans waiting for export; more are dropped.
const QUEUE: usize = 8192;
/// Most spans in one post.
const BATCH: usize = 512;
/// Longest a span waits for its batch.
const FLUSH_PERIOD: Duration = Duration::from_secs(1);
/// Longest one post may take.
const POST_TIMEOUT: Duration = Duration::from_secs(10);

/// OTLP span kinds.
#[derive(Clone, Copy, Debug)]
pub(crate) enum SpanKind {
    Internal = 1,
    Server = 2,
    Client = 3,
}

/// A finished span.
#[derive(Clone, Debug)]
pub(crate) struct Span {
    pub trace_id: u128,
    pub span_id: u64,
    pub parent_id: Option<u64>,
    pub name: &'static str,
    pub kind: SpanKind,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, Attribute)>,
    pub error: bool,
}

/// An attribute value.
#[derive(Clone, Debug)]
pub(crate) enum Attribute {
    Text(String),
    Int(i64),
    Bool(bool),
}

/// Hands spans to the background exporter. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SpanExporter {
    queue: mpsc::Sender<Span>,
    dropped: IntCounter,
}

impl SpanExporter {
    /// Starts exporting to `endpoint` (such as `http://collector:4318`) on the current
    /// runtime; ends when every exporter handle is dropped. Spans dropped because the
    /// queue is full are counted in `dropped`.
    pub fn start(endpoint: &Uri, dropped: IntCounter) -> Result<Self, http::Error> {
        let url = traces_url(endpoint)?;
        let (queue, spans) = mpsc::channel(QUEUE);
        tokio::spawn(export(url, spans));
        Ok(Self { queue, dropped })
    }

    /// Queues a finished span, or drops it when the queue is full.
    pub(crate) fn record(&self, span: Span) {
        if self.queue.try_send(span).is_err() {
            self.dropped.inc();
        }
    }
}

/// `<endpoint>/v1/traces`, unless the endpoint already names that path.
fn traces_url(endpoint: &Uri) -> Result<Uri, http::Error> {
    let text = endpoint.to_string();
    if text.trim_end_matches('/').ends_with("/v1/traces") {
        return Ok(endpoint.clone());
    }
    Ok(Uri::try_from(format!(
        "{}/v1/traces",
        text.trim_end_matches('/')
    ))?)
}

async fn export(url: Uri, mut spans: mpsc::Receiver<Span>) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(first) = spans.recv().await {
        batch.push(first);
        let flush_at = tokio::time::Instant::now() + FLUSH_PERIOD;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(flush_at, spans.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let body = encode(&batch);
        let count = batch.len();
        batch.clear();
        let request = Request::post(url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)));
        let request = match request {
            Ok(request) => request,
            Err(error) => {
                tracing::warn!(error = %ErrorChain(&error), "building the span export failed");
                continue;
            }
        };
        match tokio::time::timeout(POST_TIMEOUT, client.request(request)).await {
            Ok(Ok(response)) if response.status().is_success() => {}
            Ok(Ok(response)) => {
                tracing::warn!(status = %response.status(), spans = count, %url, "the OTLP endpoint refused spans");
            }
            Ok(Err(error)) => {
                tracing::warn!(error = %ErrorChain(&error), spans = count, %url, "exporting spans failed");
            }
            Err(_) => tracing::warn!(spans = count, %url, "exporting spans timed out"),
        }
    }
}

fn nanos(time: SystemTime) -> String {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos())
        .to_string()
}

/// The OTLP/JSON `ExportTraceServiceRequest` of `spans`.
fn encode(spans: &[Span]) -> Vec<u8> {
    let spans: Vec<Value> = spans
        .iter()
        .map(|span| {
            let attributes: Vec<Value> = span
                .attributes
                .iter()
                .map(|(key, value)| {
                    let value = match value {
                        Attribute::Text(text) => json!({ "stringValue": text }),
                        Attribute::Int(n) => json!({ "intValue": n.to_string() }),
                        Attribute::Bool(b) => json!({ "boolValue": b }),
                    };
                    json!({ "key": key, "value": value })
                })
                .collect();
            let mut encoded = json!({
                "traceId": format!("{:032x}", span.trace_id),
                "spanId": format!("{:016x}", span.span_id),
                "name": span.name,
                "kind": span.kind as i32,
                "startTimeUnixNano": nanos(span.start),
                "endTimeUnixNano": nanos(span.end),
                "attributes": attributes,
                "status": { "code": if span.error { 2 } else { 0 } },
            });
            if let (Some(parent), Some(object)) = (span.parent_id, encoded.as_object_mut()) {
                object.insert(
                    "parentSpanId".into(),
                    Value::String(format!("{parent:016x}")),
                );
            }
            encoded
        })
        .collect();
    let request = json!({
        "resourceSpans": [{
            "resource": { "attributes": [
                { "key": "service.name", "value": { "stringValue": "zeroscale-activator" } }
            ]},
            "scopeSpans": [{
                "scope": { "name": "zeroscale-activator" },
                "spans": spans,
            }],
        }],
    });
    serde_json::to_vec(&request).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_gains_the_traces_path_once() {
        let url = |text: &str| traces_url(&Uri::try_from(text).expect("uri")).expect("url");
        assert_eq!(
            url("http://collector:4318"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            url("http://collector:4318/"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            url("http://collector:4318/v1/traces"),
            "http://collector:4318/v1/traces"
        );
    }

    #[test]
    fn spans_encode_as_otlp_json_with_hex_ids_and_attributes() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1);
        let body = encode(&[Span {
            trace_id: 0xab,
            span_id: 0xcd,
            parent_id: Some(0xef),
            name: "forward",
            kind: SpanKind::Client,
            start,
            end: start + Duration::from_millis(5),
            attributes: vec![
                ("zeroscale.function", Attribute::Text("team/hello".into())),
                ("zeroscale.cold_start", Attribute::Bool(true)),
            ],
            error: false,
        }]);
        let value: Value = serde_json::from_slice(&body).expect("json");
        let span = &value["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], format!("{:032x}", 0xab));
        assert_eq!(span["spanId"], "00000000000000cd");
        assert_eq!(span["parentSpanId"], "00000000000000ef");
        assert_eq!(span["kind"], 3);
        assert_eq!(span["startTimeUnixNano"], "1000000000");
        assert_eq!(span["endTimeUnixNano"], "1005000000");
        assert_eq!(span["attributes"][0]["value"]["stringValue"], "team/hello");
        assert_eq!(span["attributes"][1]["value"]["boolValue"], true);
    }
}
