//! The report: every scenario adds a [`Section`] (its numbers as JSON and its rows of
//! the table), and the run prints one table of rows (section, measurement, value,
//! target, result) and writes the whole report as JSON so a later run can be compared.
//!
//! A new scenario (the autoscaler's decision latency, say) returns one more `Section`;
//! nothing else changes. A row with a target is [`Row::check`] (measured value, how it
//! reads, [`Goal`], how the target reads): the table shows it PASS or MISS with how far
//! off; a row without one is [`Row::info`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;

/// How a measurement compares with its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Miss,
    /// No target: shown for context.
    Info,
}

/// Which side of its target a measurement must be on.
#[derive(Clone, Copy, Debug)]
pub enum Goal {
    AtLeast(f64),
    AtMost(f64),
}

/// One line of the table.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub section: String,
    pub measurement: String,
    pub value: String,
    pub target: String,
    pub result: Verdict,
    /// How far off the target a miss is, in percent of the target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub off_by_percent: Option<f64>,
}

impl Row {
    /// A measurement without a target.
    pub fn info(section: &str, measurement: &str, value: impl Into<String>) -> Self {
        Self {
            section: section.to_owned(),
            measurement: measurement.to_owned(),
            value: value.into(),
            target: String::new(),
            result: Verdict::Info,
            off_by_percent: None,
        }
    }

    /// A measurement `measured` checked against `goal`; `value` and `target` are how the
    /// two read in the table.
    pub fn check(
        section: &str,
        measurement: &str,
        measured: f64,
        value: impl Into<String>,
        goal: Goal,
        target: impl Into<String>,
    ) -> Self {
        let (pass, limit) = match goal {
            Goal::AtLeast(limit) => (measured >= limit, limit),
            Goal::AtMost(limit) => (measured <= limit, limit),
        };
        let off_by_percent = (!pass && limit != 0.0)
            .then(|| ((measured - limit) / limit * 1000.0).round() / 10.0)
            .filter(|percent| percent.is_finite());
        Self {
            section: section.to_owned(),
            measurement: measurement.to_owned(),
            value: value.into(),
            target: target.into(),
            result: if pass { Verdict::Pass } else { Verdict::Miss },
            off_by_percent,
        }
    }

    fn result_text(&self) -> String {
        match (self.result, self.off_by_percent) {
            (Verdict::Pass, _) => "PASS".to_owned(),
            (Verdict::Miss, Some(off)) => format!("MISS ({off:+}%)"),
            (Verdict::Miss, None) => "MISS".to_owned(),
            (Verdict::Info, _) => String::new(),
        }
    }
}

/// What one scenario contributes.
#[derive(Debug)]
pub struct Section {
    /// Key in the JSON `sections` object, e.g. `warm`.
    pub name: &'static str,
    pub data: serde_json::Value,
    pub rows: Vec<Row>,
    /// Failures that make the run fail (errors where there must be none), as opposed to
    /// missed performance targets, which only show in the table.
    pub hard_errors: Vec<String>,
}

/// The machine and tools a run measured on.
#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub wrk: String,
    pub nginx: String,
}

/// A whole run.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Bumped when the layout changes incompatibly.
    pub schema: u32,
    pub mode: String,
    pub started_at: String,
    pub duration_seconds: f64,
    pub command: String,
    pub machine: Machine,
    pub sections: BTreeMap<&'static str, serde_json::Value>,
    pub rows: Vec<Row>,
    pub hard_errors: Vec<String>,
}

impl Report {
    pub fn add(&mut self, section: Section) {
        self.rows.extend(section.rows);
        self.hard_errors.extend(section.hard_errors);
        self.sections.insert(section.name, section.data);
    }

    /// The table, as aligned Markdown (readable in a terminal, pasteable into docs).
    pub fn table(&self) -> String {
        let header = ["section", "measurement", "value", "target", "result"];
        let cells: Vec<[String; 5]> = self
            .rows
            .iter()
            .map(|row| {
                [
                    row.section.clone(),
                    row.measurement.clone(),
                    row.value.clone(),
                    row.target.clone(),
                    row.result_text(),
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for row in &cells {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: &[String]| {
            out.push('|');
            for (cell, width) in cells.iter().zip(widths) {
                let _ = write!(out, " {cell:<width$} |");
            }
            out.push('\n');
        };
        line(&mut out, &header.map(str::to_owned));
        line(&mut out, &widths.map(|w| "-".repeat(w)));
        for row in &cells {
            line(&mut out, row);
        }
        out
    }

    /// Writes the report as pretty JSON to `path`, creating its folder.
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(folder)
                .with_context(|| format!("creating {}", folder.display()))?;
        }
        let json = serde_json::to_string_pretty(self).context("serializing the report")?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))
    }
}

/// Median of `values` (the mean of the middle two for an even count); 0 when empty.
pub fn median(values: &[f64]) -> f64 {
    percentile(values, 50.0)
}

/// The `p`th percentile of `values` by linear interpolation between closest ranks.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return 0.0;
    }
    sorted.sort_by(f64::total_cmp);
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let low = rank.floor() as usize;
    let high = rank.ceil() as usize;
    let weight = rank - low as f64;
    sorted[low] * (1.0 - weight) + sorted[high] * weight
}

/// A duration in microseconds, in the unit that reads best.
pub fn micros(us: f64) -> String {
    if us.abs() >= 1_000_000.0 {
        format!("{:.2} s", us / 1e6)
    } else if us.abs() >= 1000.0 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{us:.0} us")
    }
}

/// Kibibytes in the unit that reads best.
pub fn kib(kb: f64) -> String {
    if kb.abs() >= 1024.0 {
        format!("{:.1} MiB", kb / 1024.0)
    } else {
        format!("{kb:.1} KiB")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_between_ranks() {
        let values = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(median(&values), 2.5);
        assert_eq!(percentile(&values, 0.0), 1.0);
        assert_eq!(percentile(&values, 100.0), 4.0);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn a_miss_says_how_far_off_it_is() {
        let row = Row::check("s", "m", 0.45, "0.45x", Goal::AtLeast(0.6), ">= 0.6x");
        assert_eq!(row.result, Verdict::Miss);
        assert_eq!(row.result_text(), "MISS (-25%)");
        let row = Row::check("s", "m", 80.0, "80 us", Goal::AtMost(100.0), "<= 100 us");
        assert_eq!(row.result_text(), "PASS");
    }
}
