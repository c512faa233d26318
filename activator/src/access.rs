//! Access logs (`--access-log`): one JSON line per sampled request, with what an
//! operator needs to follow a request (Function, method, path without its query, status,
//! durations, pod, trace id, auth subject) and nothing secret: no query string, header
//! value or body.
//!
//! The request path formats the line and `try_send`s it into a bounded queue; a
//! dedicated thread writes the lines (to stdout in the activator). When the writer falls
//! behind, lines are dropped and counted instead of slowing requests.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::mpsc;

use prometheus::IntCounter;
use serde::Serialize;

/// Lines waiting for the writer; more are dropped.
const QUEUE: usize = 16_384;

/// One request, as its access log line says.
#[derive(Debug, Serialize)]
pub(crate) struct Entry<'a> {
    pub time: String,
    pub function: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    /// Seconds from arrival to the response head.
    pub duration: f64,
    /// The response's Content-Length; null when it streams without one.
    pub bytes: Option<u64>,
    pub cold_start: bool,
    /// Seconds the request waited for a pod; 0 when one was free.
    pub queue_wait: f64,
    pub pod: Option<SocketAddr>,
    pub trace_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<&'a str>,
}

/// Writes sampled access log lines in the background. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AccessLog {
    /// Requests whose trace id falls below this are logged (of `u64::MAX`).
    threshold: u64,
    lines: mpsc::SyncSender<String>,
    dropped: IntCounter,
}

impl AccessLog {
    /// Logs a `sample_rate` share of requests (0 to 1) to stdout, counting the lines it
    /// drops in `dropped`.
    pub fn to_stdout(sample_rate: f64, dropped: IntCounter) -> std::io::Result<Self> {
        Self::to_writer(sample_rate, std::io::stdout(), dropped)
    }

    /// Logs a `sample_rate` share of requests to `writer`, from a thread of its own.
    pub fn to_writer(
        sample_rate: f64,
        writer: impl Write + Send + 'static,
        dropped: IntCounter,
    ) -> std::io::Result<Self> {
        let (lines, queued) = mpsc::sync_channel::<String>(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(queued, writer))?;
        let rate = sample_rate.clamp(0.0, 1.0);
        Ok(Self {
            threshold: if rate >= 1.0 {
                u64::MAX
            } else {
                (rate * u64::MAX as f64) as u64
            },
            lines,
            dropped,
        })
    }

    /// Whether the request with this trace id is logged: the same choice on every
    /// activator that sees the trace.
    pub(crate) fn sampled(&self, trace_id: u128) -> bool {
        self.threshold == u64::MAX || (trace_id as u64) < self.threshold
    }

    /// Queues the line for `entry`, or drops it when the writer is behind.
    pub(crate) fn log(&self, entry: &Entry<'_>) {
        let Ok(line) = serde_json::to_string(entry) else {
            return;
        };
        if self.lines.try_send(line).is_err() {
            self.dropped.inc();
        }
    }
}

fn write_lines(queued: mpsc::Receiver<String>, writer: impl Write) {
    let mut writer = std::io::BufWriter::new(writer);
    while let Ok(line) = queued.recv() {
        let mut result = writeln!(writer, "{line}");
        // Flush when the queue is drained, so lines show up promptly but are written
        // in batches under load.
        while result.is_ok()
            && let Ok(line) = queued.try_recv()
        {
            result = writeln!(writer, "{line}");
        }
        if let Err(error) = result.and_then(|()| writer.flush()) {
            eprintln!("writing the access log failed: {error}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Lines(mpsc::Sender<Vec<u8>>);

    impl Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.send(bytes.to_vec());
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn dropped() -> IntCounter {
        IntCounter::new("dropped", "lines dropped").expect("counter")
    }

    fn entry() -> Entry<'static> {
        Entry {
            time: "2026-12-07T05:00:00Z".into(),
            function: "team/hello",
            method: "GET",
            path: "/hi",
            status: 200,
            duration: 0.5,
            bytes: Some(2),
            cold_start: false,
            queue_wait: 0.0,
            pod: None,
            trace_id: "ab".into(),
            subject: None,
        }
    }

    /// A writer that says when it is first called and then never returns.
    struct Stuck(mpsc::Sender<()>);

    impl Write for Stuck {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.send(());
            loop {
                std::thread::park();
            }
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_past_a_full_queue_are_dropped_and_counted() {
        let (stuck, writing) = mpsc::channel();
        let dropped = dropped();
        let log = AccessLog::to_writer(1.0, Stuck(stuck), dropped.clone()).expect("log");
        log.log(&entry());
        writing
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("the writer took the first line");
        for _ in 0..QUEUE + 5 {
            log.log(&entry());
        }
        assert_eq!(dropped.get(), 5);
    }

    #[test]
    fn a_logged_request_is_one_json_line_and_sampling_follows_the_trace_id() {
        let (sent, written) = mpsc::channel();
        let log = AccessLog::to_writer(1.0, Lines(sent), dropped()).expect("log");
        assert!(log.sampled(0) && log.sampled(u128::MAX));
        log.log(&entry());
        let mut text = Vec::new();
        while !text.ends_with(b"\n") {
            text.extend(
                written
                    .recv_timeout(std::time::Duration::from_secs(5))
                    .expect("written"),
            );
        }
        let line: serde_json::Value = serde_json::from_slice(&text).expect("json");
        assert_eq!(line["function"], "team/hello");
        assert_eq!(line["status"], 200);
        assert!(line.get("subject").is_none());

        let half = AccessLog::to_writer(0.5, std::io::sink(), dropped()).expect("log");
        assert!(half.sampled(1));
        assert!(!half.sampled(u128::from(u64::MAX)));
        let none = AccessLog::to_writer(0.0, std::io::sink(), dropped()).expect("log");
        assert!(!none.sampled(0));
    }
}
