//! Load per Function from the activators' stats reports. Reports carry cumulative
//! counters, so the load over a tick is the difference between two reports of the same
//! activator process divided by the time between them; an activator seen for the first
//! time (or restarted: new instance id) contributes its instantaneous counts instead.

use std::collections::HashMap;

use zeroscale_api::routing::FunctionKey;
use zeroscale_api::stats::StatsReport;

/// What all activators together saw of one Function over the last tick.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Observed {
    /// Average requests in flight or queued.
    pub concurrency: f64,
    /// Requests per second.
    pub rps: f64,
    /// Requests that arrived during the tick, or are in flight or queued now.
    pub active: bool,
    /// Requests waiting for a pod now.
    pub held: bool,
}

/// Remembers each activator's last report to turn counters into rates.
#[derive(Debug, Default)]
pub struct LoadMeter {
    previous: HashMap<String, StatsReport>,
}

impl LoadMeter {
    /// Folds one scrape of every activator into per-Function load. Activators missing
    /// from `reports` are forgotten.
    pub fn observe(&mut self, reports: Vec<StatsReport>) -> HashMap<FunctionKey, Observed> {
        let mut observed: HashMap<FunctionKey, Observed> = HashMap::new();
        for report in &reports {
            let previous = self.previous.get(&report.instance);
            let elapsed = previous
                .map(|p| report.uptime_seconds - p.uptime_seconds)
                .filter(|elapsed| *elapsed > 0.0);
            for function in &report.functions {
                let key = FunctionKey::new(&function.namespace, &function.name);
                let before = previous.zip(elapsed).and_then(|(p, elapsed)| {
                    p.functions
                        .iter()
                        .find(|f| f.namespace == function.namespace && f.name == function.name)
                        .map(|f| (f, elapsed))
                });
                let instant = (function.in_flight + function.queued) as f64;
                let (concurrency, rps, arrived) = match before {
                    Some((before, elapsed)) => {
                        let requests = function
                            .requests_total
                            .saturating_sub(before.requests_total);
                        let busy = (function.concurrency_seconds_total
                            - before.concurrency_seconds_total)
                            .max(0.0);
                        (busy / elapsed, requests as f64 / elapsed, requests > 0)
                    }
                    None => (instant, 0.0, false),
                };
                let entry = observed.entry(key).or_default();
                entry.concurrency += concurrency;
                entry.rps += rps;
                entry.active |= arrived || instant > 0.0;
                entry.held |= function.queued > 0;
            }
        }
        self.previous = reports
            .into_iter()
            .map(|report| (report.instance.clone(), report))
            .collect();
        observed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroscale_api::stats::FunctionStats;

    fn report(
        instance: &str,
        uptime: f64,
        requests: u64,
        busy: f64,
        in_flight: u64,
        queued: u64,
    ) -> StatsReport {
        StatsReport {
            instance: instance.into(),
            uptime_seconds: uptime,
            functions: vec![FunctionStats {
                namespace: "team".into(),
                name: "hello".into(),
                requests_total: requests,
                concurrency_seconds_total: busy,
                in_flight,
                queued,
                ..FunctionStats::default()
            }],
        }
    }

    fn id() -> FunctionKey {
        FunctionKey::new("team", "hello")
    }

    #[test]
    fn rates_come_from_the_difference_of_two_reports() {
        let mut meter = LoadMeter::default();
        meter.observe(vec![report("a", 10.0, 100, 50.0, 0, 0)]);
        let observed = meter.observe(vec![report("a", 12.0, 300, 70.0, 0, 0)]);
        let load = observed[&id()];
        assert_eq!(load.rps, 100.0);
        assert_eq!(load.concurrency, 10.0);
        assert!(load.active);
        assert!(!load.held);
    }

    #[test]
    fn load_of_several_activators_adds_up() {
        let mut meter = LoadMeter::default();
        meter.observe(vec![
            report("a", 1.0, 0, 0.0, 0, 0),
            report("b", 5.0, 0, 0.0, 0, 0),
        ]);
        let observed = meter.observe(vec![
            report("a", 2.0, 10, 3.0, 0, 0),
            report("b", 6.0, 20, 4.0, 0, 2),
        ]);
        let load = observed[&id()];
        assert_eq!(load.rps, 30.0);
        assert_eq!(load.concurrency, 7.0);
        assert!(load.held);
    }

    #[test]
    fn new_or_restarted_activator_counts_what_it_holds_now() {
        let mut meter = LoadMeter::default();
        let observed = meter.observe(vec![report("a", 1.0, 5, 1.0, 2, 1)]);
        assert_eq!(observed[&id()].concurrency, 3.0);
        assert!(observed[&id()].active && observed[&id()].held);
        // Restarted: a new instance id, counters from zero.
        let observed = meter.observe(vec![report("a2", 0.5, 1, 0.1, 0, 0)]);
        assert_eq!(observed[&id()].concurrency, 0.0);
        assert!(!observed[&id()].active);
    }

    #[test]
    fn idle_function_is_inactive() {
        let mut meter = LoadMeter::default();
        meter.observe(vec![report("a", 1.0, 7, 2.0, 0, 0)]);
        let observed = meter.observe(vec![report("a", 2.0, 7, 2.0, 0, 0)]);
        assert_eq!(observed[&id()], Observed::default());
    }
}
