//! Names of the JetStream streams, subjects, consumers and key-value buckets zeroscale
//! uses, in one place so the activator that writes and reads them, the operator that
//! creates and deletes them and the autoscaler that reads their backlog always agree.
//!
//! Namespaces and Function names are DNS labels (lowercase letters, digits, `-`), so
//! joining them with `_` or `.` is unambiguous and valid in every NATS name.

use zeroscale_api::routing::FunctionKey;

/// The stream holding every accepted asynchronous call until it is delivered
/// (work-queue retention: a call leaves it when acknowledged).
pub const CALLS_STREAM: &str = "ZEROSCALE_CALLS";

/// Subjects of [`CALLS_STREAM`].
pub const CALLS_SUBJECTS: &str = "zeroscale.calls.>";

/// The stream holding calls and queue messages whose delivery failed for good, with
/// their last error.
pub const DEAD_LETTER_STREAM: &str = "ZEROSCALE_DEAD";

/// Subjects of [`DEAD_LETTER_STREAM`].
pub const DEAD_LETTER_SUBJECTS: &str = "zeroscale.dead.>";

/// Subject the Function's asynchronous calls are published on.
pub fn calls_subject(function: &FunctionKey) -> String {
    format!("zeroscale.calls.{}.{}", function.namespace, function.name)
}

/// Durable pull consumer of [`CALLS_STREAM`] that delivers the Function's calls; every
/// activator replica pulls from it, so each call goes to one of them.
pub fn calls_consumer(function: &FunctionKey) -> String {
    format!("calls_{}_{}", function.namespace, function.name)
}

/// Subject of [`DEAD_LETTER_STREAM`] the Function's dead calls go to.
pub fn dead_calls_subject(function: &FunctionKey) -> String {
    format!(
        "zeroscale.dead.{}.{}.calls",
        function.namespace, function.name
    )
}

/// Subject of [`DEAD_LETTER_STREAM`] the dead messages of queue trigger `trigger` go to.
pub fn dead_queue_subject(function: &FunctionKey, trigger: &str) -> String {
    format!(
        "zeroscale.dead.{}.{}.queue.{trigger}",
        function.namespace, function.name
    )
}

/// Key-value bucket holding the state of the Function's calls (and its idempotency
/// keys), each entry kept for the Function's `async.resultRetention`.
pub fn call_state_bucket(function: &FunctionKey) -> String {
    format!("zeroscale_calls_{}_{}", function.namespace, function.name)
}

/// Durable pull consumer, on the user's stream, that delivers the messages of queue
/// trigger `trigger` to the Function.
pub fn queue_consumer(function: &FunctionKey, trigger: &str) -> String {
    format!(
        "zeroscale_{}_{}_{trigger}",
        function.namespace, function.name
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> FunctionKey {
        FunctionKey::new("team-a", "resize")
    }

    /// NATS refuses `.`, `*`, `>`, whitespace and path separators in stream, consumer
    /// and bucket names.
    fn valid_name(name: &str) -> bool {
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    }

    #[test]
    fn consumer_and_bucket_names_are_valid_nats_names() {
        for name in [
            calls_consumer(&key()),
            call_state_bucket(&key()),
            queue_consumer(&key(), "orders"),
            CALLS_STREAM.to_owned(),
            DEAD_LETTER_STREAM.to_owned(),
        ] {
            assert!(valid_name(&name), "{name}");
        }
    }

    #[test]
    fn subjects_fall_under_their_stream_and_differ_per_function() {
        let subject = calls_subject(&key());
        assert_eq!(subject, "zeroscale.calls.team-a.resize");
        assert!(subject.starts_with(CALLS_SUBJECTS.trim_end_matches('>')));
        assert_ne!(subject, calls_subject(&FunctionKey::new("team-a", "other")));
        for dead in [
            dead_calls_subject(&key()),
            dead_queue_subject(&key(), "orders"),
        ] {
            assert!(dead.starts_with(DEAD_LETTER_SUBJECTS.trim_end_matches('>')));
        }
    }

    #[test]
    fn names_of_two_functions_never_collide() {
        let a = FunctionKey::new("a-b", "c");
        let b = FunctionKey::new("a", "b-c");
        assert_ne!(calls_consumer(&a), calls_consumer(&b));
        assert_ne!(call_state_bucket(&a), call_state_bucket(&b));
        assert_ne!(queue_consumer(&a, "q"), queue_consumer(&b, "q"));
    }
}
