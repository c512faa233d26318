//! Silent connections: the activator's resident set per open connection that never sends
//! a byte (RSS delta / connections; kernel socket buffers are not in RSS), and whether
//! the activator closes every one of them after its first-byte timeout.

use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use serde_json::json;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::activator::ActivatorProcess;
use crate::procs;
use crate::report::{Goal, Row, Section, kib};

/// How the silent connections are measured.
#[derive(Clone, Debug, Serialize)]
pub struct ConnectionsConfig {
    pub connections: usize,
}

/// Connections opened at once.
const OPENING: usize = 256;

/// The activator's default `--first-byte-timeout`, and the margin allowed beyond it.
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);
const MARGIN: Duration = Duration::from_secs(5);

pub async fn run(config: &ConnectionsConfig) -> anyhow::Result<Section> {
    let activator =
        ActivatorProcess::start(None, Duration::from_millis(crate::PROBE_PERIOD_MS)).await?;
    let pid = activator.pid();
    // Let the runtime's threads start and settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = procs::memory(pid)?.rss_kib;

    let opened_at = tokio::time::Instant::now();
    let mut streams = Vec::with_capacity(config.connections);
    while streams.len() < config.connections {
        let batch = (config.connections - streams.len()).min(OPENING);
        let mut opening = JoinSet::new();
        for _ in 0..batch {
            let addr = activator.addr();
            opening.spawn(async move { TcpStream::connect(addr).await });
        }
        while let Some(opened) = opening.join_next().await {
            streams.push(opened.context("a client task")?.context("connecting")?);
        }
    }
    // The accept loop catches up with the last connections.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let open = procs::memory(pid)?.rss_kib;
    let per_connection =
        open.saturating_sub(before) as f64 / config.connections.max(1) as f64 * 1024.0;

    // Every silent connection must be closed by the activator, none by the client.
    let deadline = opened_at + FIRST_BYTE_TIMEOUT + MARGIN;
    let mut closing = JoinSet::new();
    for mut stream in streams {
        closing.spawn(async move {
            let mut byte = [0u8; 1];
            tokio::time::timeout_at(deadline, stream.read(&mut byte))
                .await
                .is_ok_and(|read| matches!(read, Ok(0) | Err(_)))
        });
    }
    let mut closed = 0;
    while let Some(result) = closing.join_next().await {
        if result.context("a client task")? {
            closed += 1;
        }
    }
    eprintln!(
        "connections: {} silent connections took {} ({per_connection:.0} bytes each); \
         {closed} closed by the activator",
        config.connections,
        kib(open.saturating_sub(before) as f64),
    );

    let section = "connections";
    let rows = vec![
        Row::check(
            section,
            &format!("RSS per silent connection ({} open)", config.connections),
            per_connection,
            format!("{per_connection:.0} B"),
            // Before the first-byte timeout: 8,000 such connections held 42 MB (5.3 KiB each).
            Goal::AtMost(6.0 * 1024.0),
            "<= 6 KiB",
        ),
        Row::check(
            section,
            "silent connections closed by the first-byte timeout",
            closed as f64 / config.connections.max(1) as f64,
            format!("{closed} of {}", config.connections),
            Goal::AtLeast(1.0),
            "all, within 10 s + 5 s",
        ),
    ];
    Ok(Section {
        name: "connections",
        data: json!({
            "config": config,
            "before_rss_kib": before,
            "open_rss_kib": open,
            "per_connection_bytes": per_connection,
            "closed": closed,
        }),
        rows,
        hard_errors: Vec::new(),
    })
}
