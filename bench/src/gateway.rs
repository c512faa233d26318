//! Gateway costs on the warm path: the activator with a rate limit on the warm Function
//! (high enough never to refuse) and the activator exporting spans to a local OTLP
//! receiver, each measured beside the plain activator in the same run and reported as a
//! ratio of its throughput (issue 16's target: each keeps at least 90%). The three run in
//! turn in rounds, like the warm path, and each figure is the median over rounds.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

use crate::activator::{self, ActivatorProcess, Runtime};
use crate::procs;
use crate::report::{Goal, Row, Section, median};
use crate::tools;

/// How the gateway rows are measured.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub concurrency: usize,
    pub seconds: u64,
    pub rounds: usize,
}

const TARGETS: [&str; 3] = ["activator", "rate-limit", "tracing"];

/// A rate no warm run reaches: the limit is checked on every request, never refuses.
const UNREACHED_RPS: &str = "10000000";

pub async fn run(config: &GatewayConfig, dir: &Path) -> anyhow::Result<Section> {
    let upstream = procs::spawn_self(&["serve-upstream".to_owned()]).await?;
    let (receiver, spans_received) = otlp_receiver().await?;
    let probe = Duration::from_millis(crate::PROBE_PERIOD_MS);
    let plain = ActivatorProcess::start(Some(upstream.addr), probe).await?;
    let mut limited = ActivatorProcess::start(Some(upstream.addr), probe).await?;
    limited
        .command(&format!(
            "ratelimit {} {UNREACHED_RPS}",
            activator::WARM_FUNCTION
        ))
        .await?;
    let traced = ActivatorProcess::start_with_args(
        Some(upstream.addr),
        probe,
        Runtime::PerCore,
        &["--otlp-endpoint".to_owned(), format!("http://{receiver}")],
    )
    .await?;
    let script = tools::write_wrk_script(dir)?;
    let host = activator::host(activator::WARM_FUNCTION);
    let url = |target: &str| match target {
        "activator" => format!("http://{}/", plain.addr()),
        "rate-limit" => format!("http://{}/", limited.addr()),
        _ => format!("http://{}/", traced.addr()),
    };

    for target in TARGETS {
        tools::wrk(
            &script,
            &url(target),
            &host,
            None,
            config.concurrency,
            Duration::from_secs(1),
        )
        .await?;
    }
    let mut rates: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut hard_errors = Vec::new();
    for round in 0..config.rounds {
        for target in TARGETS {
            let run = tools::wrk(
                &script,
                &url(target),
                &host,
                None,
                config.concurrency,
                Duration::from_secs(config.seconds),
            )
            .await?;
            eprintln!(
                "gateway c={} round {} {target}: {:.0} req/s",
                config.concurrency,
                round + 1,
                run.requests_per_second
            );
            if run.errors > 0 || run.non_2xx > 0 {
                hard_errors.push(format!(
                    "gateway {target}: {} errors, {} non-2xx answers",
                    run.errors, run.non_2xx
                ));
            }
            rates
                .entry(target)
                .or_default()
                .push(run.requests_per_second);
        }
    }

    let rps = |target: &str| median(rates.get(target).map_or(&[][..], Vec::as_slice));
    let plain_rps = rps("activator");
    let section = "gateway";
    let c = config.concurrency;
    let mut rows = vec![Row::info(
        section,
        &format!("plain activator, c={c}"),
        format!("{plain_rps:.0} req/s"),
    )];
    for (target, what) in [
        ("rate-limit", "rate limit on (not limiting)"),
        ("tracing", "tracing on (exporting)"),
    ] {
        let ratio = if plain_rps > 0.0 {
            rps(target) / plain_rps
        } else {
            0.0
        };
        rows.push(Row::check(
            section,
            &format!("{what}, c={c}, throughput vs plain"),
            ratio,
            format!("{:.3} ({:.0} req/s)", ratio, rps(target)),
            Goal::AtLeast(0.9),
            ">= 0.9",
        ));
    }
    let received = spans_received.load(Ordering::Relaxed);
    rows.push(Row::info(
        section,
        "spans received by the OTLP receiver",
        received.to_string(),
    ));
    if received == 0 {
        hard_errors.push("gateway: the OTLP receiver got no spans".to_owned());
    }
    Ok(Section {
        name: section,
        data: json!({
            "concurrency": c,
            "seconds": config.seconds,
            "rounds": config.rounds,
            "requests_per_second": rates,
            "spans_received": received,
        }),
        rows,
        hard_errors,
    })
}

/// An OTLP/HTTP receiver on 127.0.0.1:0 that counts the spans posted to it (by their
/// `spanId` fields) and answers 200.
async fn otlp_receiver() -> anyhow::Result<(SocketAddr, Arc<AtomicU64>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let received = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&received);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counted = Arc::clone(&counted);
            let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let counted = Arc::clone(&counted);
                async move {
                    let body = request
                        .into_body()
                        .collect()
                        .await
                        .map(|body| body.to_bytes())
                        .unwrap_or_default();
                    let spans = body.windows(8).filter(|w| w == b"\"spanId\"").count();
                    counted.fetch_add(spans as u64, Ordering::Relaxed);
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"{}"))))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    Ok((addr, received))
}
