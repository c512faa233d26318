//! The gateway steps around a request's dispatch: before it, CORS preflights answered
//! here ([`crate::cors`]), rate limits ([`crate::ratelimit`]) and the trace context
//! ([`crate::trace`]); after it, the CORS headers, spans ([`crate::otlp`]) and the access
//! log line ([`crate::access`]). With no endpoint and no access log the cost is the
//! `traceparent` handling alone.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderValue};
use http::{Request, Response};
use tokio::time::Instant;

use crate::access::{AccessLog, Entry};
use crate::cors::CorsPolicy;
use crate::functions::FunctionState;
use crate::otlp::{Attribute, Span, SpanExporter, SpanKind};
use crate::ratelimit::{self, ClientIdentity};
use crate::trace::{self, TraceContext};

/// What the gateway steps do beyond each Function's spec.
#[derive(Clone, Debug)]
pub struct Gateway {
    /// Activator replicas sharing each rate limit: each enforces its share.
    pub replicas: u32,
    /// Where spans go; none exported when unset.
    pub spans: Option<SpanExporter>,
    /// Where access log lines go; none written when unset.
    pub access_log: Option<AccessLog>,
}

impl Default for Gateway {
    fn default() -> Self {
        Self {
            replicas: 1,
            spans: None,
            access_log: None,
        }
    }
}

/// A request the activator answered before dispatch, and the metric label it counts
/// under (none for a preflight).
pub(crate) struct Answered<B> {
    pub response: Response<B>,
    pub error_label: Option<&'static str>,
}

/// What the steps before dispatch pass to the ones after it.
pub(crate) struct Admitted {
    origin: Option<HeaderValue>,
    trace: TraceContext,
    /// The activator's request span; with export, the forward span is the pod's parent.
    request_span: u64,
    forward_span: u64,
    /// Wall clock at arrival, when spans or access log lines need it.
    wall_arrived: Option<SystemTime>,
    /// Method and query-less path, when this request is logged.
    logged: Option<(http::Method, String)>,
    subject: Option<String>,
}

/// What happened to a request on its way to a pod, for spans and the access log.
#[derive(Debug)]
pub(crate) struct Observed {
    pub arrived: Instant,
    pub pod: Option<SocketAddr>,
    /// How long the request waited for a pod, if it waited.
    pub queue_wait: Option<Duration>,
    /// Whether it waited for the Function to start from zero.
    pub cold_start: bool,
}

impl Observed {
    pub(crate) fn new(arrived: Instant) -> Self {
        Self {
            arrived,
            pod: None,
            queue_wait: None,
            cold_start: false,
        }
    }
}

impl Gateway {
    /// Answers a preflight or refuses a request over its rate limit; else sets the
    /// request's `traceparent` and lets it through.
    pub(crate) fn admit<T, B>(
        &self,
        function: &FunctionState,
        request: &mut Request<T>,
        client: &ClientIdentity<'_>,
    ) -> Result<Admitted, Box<Answered<crate::body::ResponseBody<B>>>> {
        let settings = function.settings();
        let cors = settings.cors.as_ref();
        let trace = TraceContext::from_headers(request.headers());
        if let Some(cors) = cors
            && CorsPolicy::is_preflight(request.method(), request.headers())
        {
            let response = cors.preflight(request.headers());
            self.log_answered(function, request, &response, &trace, client);
            return Err(Box::new(Answered {
                response,
                error_label: None,
            }));
        }
        let origin = cors.and_then(|_| request.headers().get(header::ORIGIN).cloned());
        if let Some(limiter) = function.rate_limiter()
            && let Err(limited) =
                limiter.check(client, request.headers(), limiter.now(), self.replicas)
        {
            let mut response = limited.into_response();
            if let Some(cors) = cors {
                cors.decorate(origin.as_ref(), response.headers_mut());
            }
            self.log_answered(function, request, &response, &trace, client);
            return Err(Box::new(Answered {
                response,
                error_label: Some(ratelimit::LABEL),
            }));
        }

        let request_span = trace::random_span_id();
        let forward_span = if self.spans.is_some() {
            trace::random_span_id()
        } else {
            request_span
        };
        trace.propagate(forward_span, request.headers_mut());
        let logged = self
            .access_log
            .as_ref()
            .filter(|log| log.sampled(trace.trace_id))
            .map(|_| (request.method().clone(), request.uri().path().to_owned()));
        let wall_arrived = (self.spans.is_some() || logged.is_some()).then(SystemTime::now);
        Ok(Admitted {
            origin,
            trace,
            request_span,
            forward_span,
            wall_arrived,
            subject: logged.as_ref().and(client.subject).map(str::to_owned),
            logged,
        })
    }

    /// Logs an answer the activator made before dispatch (a preflight or a 429).
    fn log_answered<T, B>(
        &self,
        function: &FunctionState,
        request: &Request<T>,
        response: &Response<B>,
        trace: &TraceContext,
        client: &ClientIdentity<'_>,
    ) {
        let Some(log) = self
            .access_log
            .as_ref()
            .filter(|log| log.sampled(trace.trace_id))
        else {
            return;
        };
        let function_name = function.key.to_string();
        log.log(&Entry {
            time: jiff::Timestamp::now().to_string(),
            function: &function_name,
            method: request.method().as_str(),
            path: request.uri().path(),
            status: response.status().as_u16(),
            duration: 0.0,
            bytes: None,
            cold_start: false,
            queue_wait: 0.0,
            pod: None,
            trace_id: format!("{:032x}", trace.trace_id),
            subject: client.subject,
        });
    }

    /// Adds the CORS headers to the answer and records its span and access log line.
    pub(crate) fn finish<B>(
        &self,
        admitted: Admitted,
        function: &FunctionState,
        response: &mut Response<B>,
        observed: &Observed,
    ) {
        if let Some(cors) = &function.settings().cors {
            cors.decorate(admitted.origin.as_ref(), response.headers_mut());
        }
        let Some(wall_arrived) = admitted.wall_arrived else {
            return;
        };
        let duration = observed.arrived.elapsed();
        let status = response.status();
        if let Some(spans) = &self.spans {
            record_spans(spans, &admitted, function, duration, status, observed);
        }
        if let (Some(log), Some((method, path))) = (&self.access_log, &admitted.logged) {
            let bytes = response
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|length| length.to_str().ok()?.parse().ok());
            let function_name = function.key.to_string();
            log.log(&Entry {
                time: jiff::Timestamp::try_from(wall_arrived)
                    .map(|time| time.to_string())
                    .unwrap_or_default(),
                function: &function_name,
                method: method.as_str(),
                path,
                status: status.as_u16(),
                duration: duration.as_secs_f64(),
                bytes,
                cold_start: observed.cold_start,
                queue_wait: observed.queue_wait.unwrap_or_default().as_secs_f64(),
                pod: observed.pod,
                trace_id: format!("{:032x}", admitted.trace.trace_id),
                subject: admitted.subject.as_deref(),
            });
        }
    }
}

/// The request's spans: the request, the hold while it waited for a pod, the forward.
fn record_spans(
    spans: &SpanExporter,
    admitted: &Admitted,
    function: &FunctionState,
    duration: Duration,
    status: http::StatusCode,
    observed: &Observed,
) {
    let Some(start) = admitted.wall_arrived else {
        return;
    };
    let end = start + duration;
    let mut attributes = vec![
        (
            "zeroscale.function",
            Attribute::Text(function.key.to_string()),
        ),
        ("zeroscale.cold_start", Attribute::Bool(observed.cold_start)),
        (
            "http.response.status_code",
            Attribute::Int(i64::from(status.as_u16())),
        ),
    ];
    if let Some(pod) = observed.pod {
        attributes.push(("zeroscale.pod", Attribute::Text(pod.to_string())));
    }
    let trace_id = admitted.trace.trace_id;
    let wait = observed.queue_wait.unwrap_or_default().min(duration);
    let error = status.is_server_error();
    if observed.queue_wait.is_some() {
        spans.record(Span {
            trace_id,
            span_id: trace::random_span_id(),
            parent_id: Some(admitted.request_span),
            name: "hold",
            kind: SpanKind::Internal,
            start,
            end: start + wait,
            attributes: attributes[..2].to_vec(),
            error: false,
        });
    }
    if observed.pod.is_some() {
        spans.record(Span {
            trace_id,
            span_id: admitted.forward_span,
            parent_id: Some(admitted.request_span),
            name: "forward",
            kind: SpanKind::Client,
            start: start + wait,
            end,
            attributes: attributes.clone(),
            error,
        });
    }
    spans.record(Span {
        trace_id,
        span_id: admitted.request_span,
        parent_id: admitted.trace.parent_id,
        name: "request",
        kind: SpanKind::Server,
        start,
        end,
        attributes,
        error,
    });
}
