//! Memory: the activator's resident set idle, with many Functions routed, and per held
//! request: requests waiting at a Function at zero that is never woken, each on its own
//! open connection. Per held request = RSS delta / held requests. Kernel socket buffers
//! are not in RSS and not counted.

use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Serialize;
use serde_json::json;
use tokio::task::JoinSet;

use crate::activator::{self, ActivatorProcess};
use crate::client;
use crate::procs;
use crate::report::{Goal, Row, Section, kib};

/// How memory is measured.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryConfig {
    pub functions: usize,
    pub held: usize,
}

/// Connections opened at once while filling the queue.
const OPENING: usize = 256;

pub async fn run(config: &MemoryConfig) -> anyhow::Result<Section> {
    let mut activator =
        ActivatorProcess::start(None, Duration::from_millis(crate::PROBE_PERIOD_MS)).await?;
    let pid = activator.pid();
    // Let the runtime's threads start and settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = procs::memory(pid)?.rss_kib;

    activator
        .command(&format!("fns routed {}", config.functions))
        .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let with_functions = procs::memory(pid)?.rss_kib;

    let name = "held";
    activator
        .command(&format!("fn {name} {} 30m", config.held * 2))
        .await?;
    // One request held first, so the wake, the prober and the queue exist before the
    // baseline.
    let (addr, host) = (activator.addr(), activator::host(name));
    let mut streams = vec![client::send(addr, &host).await?];
    wait_queued(&mut activator, name, 1).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before_held = procs::memory(pid)?.rss_kib;

    let mut remaining = config.held - 1;
    while remaining > 0 {
        let batch = remaining.min(OPENING);
        let mut opening = JoinSet::new();
        for _ in 0..batch {
            let host = host.clone();
            opening.spawn(async move { client::send(addr, &host).await });
        }
        while let Some(opened) = opening.join_next().await {
            streams.push(opened.context("a client task")??);
        }
        remaining -= batch;
    }
    wait_queued(&mut activator, name, config.held).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let held = procs::memory(pid)?.rss_kib;
    let per_held = held.saturating_sub(before_held) as f64 / (config.held - 1).max(1) as f64;
    eprintln!(
        "memory: idle {}, {} Functions {}, {} held {} ({:.1} KiB each)",
        kib(idle as f64),
        config.functions,
        kib(with_functions as f64),
        config.held,
        kib(held as f64),
        per_held
    );
    drop(streams);

    let section = "memory";
    let rows = vec![
        Row::check(
            section,
            "activator RSS idle",
            idle as f64,
            kib(idle as f64),
            Goal::AtMost(20.0 * 1024.0),
            "<= 20 MiB",
        ),
        Row::info(
            section,
            &format!("activator RSS with {} Functions routed", config.functions),
            format!(
                "{} (+{}, {:.2} KiB per Function)",
                kib(with_functions as f64),
                kib(with_functions.saturating_sub(idle) as f64),
                with_functions.saturating_sub(idle) as f64 / config.functions.max(1) as f64
            ),
        ),
        Row::check(
            section,
            &format!("RSS per held request ({} held)", config.held),
            per_held,
            format!("{per_held:.1} KiB"),
            Goal::AtMost(12.0),
            "<= 12 KiB",
        ),
    ];
    Ok(Section {
        name: "memory",
        data: json!({
            "config": config,
            "idle_rss_kib": idle,
            "functions_rss_kib": with_functions,
            "before_held_rss_kib": before_held,
            "held_rss_kib": held,
            "per_held_kib": per_held,
        }),
        rows,
        hard_errors: Vec::new(),
    })
}

/// Waits until `count` requests wait at Function `name`.
async fn wait_queued(
    activator: &mut ActivatorProcess,
    name: &str,
    count: usize,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let queued = activator.queued(name).await?;
        if queued >= count {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("only {queued} of {count} requests are held");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
