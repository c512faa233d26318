//! What `zeroscale dev` tells the person running it, on stdout: its own events with the
//! time, and each replica's output under its name. The same lines go to the live
//! console's log once [`tee_to`] names it.

use std::io::Write;
use std::sync::{Arc, OnceLock};

use zeroscale_admin::console::{self, Console};

/// The live console that also shows these lines, once set.
static LIVE: OnceLock<Arc<Console>> = OnceLock::new();

/// Sends every later line to `live` too.
pub fn tee_to(live: Arc<Console>) {
    let _ = LIVE.set(live);
}

fn tee(line: String) {
    if let Some(live) = LIVE.get() {
        live.log(console::unix_now(), line);
    }
}

/// Prints one event line: `12:00:01 hello: 0 -> 1 (wake)`.
pub fn event(text: impl std::fmt::Display) {
    let time = jiff::Zoned::now().strftime("%H:%M:%S");
    let text = text.to_string();
    let _ = writeln!(std::io::stdout().lock(), "{time} {text}");
    tee(text);
}

/// Prints one line of a replica's output: `hello[0] | listening on :8080`.
pub fn output(prefix: &str, line: &str) {
    let line = format!("{prefix} | {line}");
    let _ = writeln!(std::io::stdout().lock(), "{line}");
    tee(line);
}

/// `30s`, `1m30s`, `500ms`: a duration as manifests write it.
pub fn duration(duration: std::time::Duration) -> String {
    let millis = duration.as_millis();
    if !millis.is_multiple_of(1000) {
        return format!("{millis}ms");
    }
    let seconds = millis / 1000;
    match (seconds / 60, seconds % 60) {
        (0, s) => format!("{s}s"),
        (m, 0) => format!("{m}m"),
        (m, s) => format!("{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_read_like_manifests() {
        assert_eq!(duration(Duration::from_secs(30)), "30s");
        assert_eq!(duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(duration(Duration::from_secs(120)), "2m");
        assert_eq!(duration(Duration::from_millis(1500)), "1500ms");
    }
}
