//! Durations in Function specs are strings such as `30s`, `1m30s` or `250ms` (the Go and
//! Knative form). The CRD schema checks their shape; [`parse`] turns them into
//! [`std::time::Duration`] and rejects values that overflow.

use std::time::Duration;

/// The schema pattern every duration field must match: one or more `<number><unit>`
/// parts, units `ms`, `s`, `m`, `h`, or a bare `0`.
pub const PATTERN: &str = r"^(0|([0-9]+(\.[0-9]+)?(ms|s|m|h))+)$";

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("{0:?} is not a duration: use a number and a unit, such as 500ms, 30s, 5m or 1h")]
    Malformed(String),
    #[error("{0:?} is too long")]
    TooLong(String),
}

/// Parses `500ms`, `30s`, `1m30s`, `1.5h` or `0`.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let malformed = || DurationError::Malformed(text.to_owned());
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err(malformed());
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(malformed)?;
        let (number, after) = rest.split_at(number_len);
        if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
            return Err(malformed());
        }
        let value: f64 = number.parse().map_err(|_| malformed())?;
        let (seconds_per_unit, unit_len) = if after.starts_with("ms") {
            (0.001, 2)
        } else if after.starts_with('s') {
            (1.0, 1)
        } else if after.starts_with('m') {
            (60.0, 1)
        } else if after.starts_with('h') {
            (3600.0, 1)
        } else {
            return Err(malformed());
        };
        total += value * seconds_per_unit;
        rest = &after[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| DurationError::TooLong(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit_and_combinations() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_missing_units_and_unknown_units() {
        for bad in ["", "30", "s", "1d", "1.s", ".5s", "1m30", "-1s", "1 s"] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn rejects_durations_that_overflow() {
        let huge = format!("{}h", "9".repeat(400));
        assert!(parse(&huge).is_err());
    }
}
