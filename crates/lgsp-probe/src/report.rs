//! The probe's report: one entry per step, written as text (✓ / ✗ / –) or JSON.

use std::io::Write;
use std::time::Instant;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Fail,
    /// Not run: an earlier step failed, or there is nothing to run it with.
    Skipped,
}

/// One step of the probe.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Stable name: `files`, `tcp`, `tls`, `client_certificate`, `api_key`, `route`, `sample`, `round_trip`.
    pub name: &'static str,
    pub outcome: Outcome,
    pub millis: f64,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// No step failed.
    pub ok: bool,
    pub steps: Vec<Step>,
}

impl Report {
    /// Writes the report as text, one line per step and the fix under a failed one, or as one JSON object.
    /// Write errors (a closed pipe, `| head`) end the output, not the process.
    pub fn write(&self, out: &mut impl Write, json: bool) {
        if json {
            let _ = writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(self).unwrap_or_default()
            );
            return;
        }
        for s in &self.steps {
            let mark = match s.outcome {
                Outcome::Pass => "✓",
                Outcome::Fail => "✗",
                Outcome::Skipped => "–",
            };
            let _ = writeln!(
                out,
                "{mark} {:<18} {:>8.1} ms  {}",
                s.name, s.millis, s.detail
            );
            if let Some(fix) = &s.fix {
                let _ = writeln!(out, "  fix: {fix}");
            }
        }
        let verdict = if self.ok {
            "connection OK"
        } else {
            "connection NOT OK"
        };
        let _ = writeln!(out, "{verdict}");
    }
}

/// The steps in the order they run.
pub(crate) const STEPS: &[&str] = &[
    "files",
    "tcp",
    "tls",
    "client_certificate",
    "api_key",
    "route",
    "sample",
    "round_trip",
];

/// A step that failed; the run holds its entry. Steps return it to stop the probe there.
#[derive(Debug)]
pub(crate) struct Failed;

/// The steps so far, each timed from the end of the one before.
pub(crate) struct Run {
    steps: Vec<Step>,
    clock: Instant,
}

impl Run {
    pub(crate) fn new() -> Self {
        Run {
            steps: Vec::new(),
            clock: Instant::now(),
        }
    }

    pub(crate) fn pass(&mut self, name: &'static str, detail: String) {
        self.push(name, Outcome::Pass, detail, None);
    }

    pub(crate) fn fail(
        &mut self,
        name: &'static str,
        detail: String,
        fix: impl Into<String>,
    ) -> Failed {
        self.push(name, Outcome::Fail, detail, Some(fix.into()));
        Failed
    }

    pub(crate) fn skip(&mut self, name: &'static str, detail: &str) {
        self.push(name, Outcome::Skipped, detail.to_owned(), None);
    }

    fn push(&mut self, name: &'static str, outcome: Outcome, detail: String, fix: Option<String>) {
        let millis = self.clock.elapsed().as_secs_f64() * 1000.0;
        self.clock = Instant::now();
        self.steps.push(Step {
            name,
            outcome,
            millis,
            detail,
            fix,
        });
    }

    /// The report; steps not reached are listed as skipped.
    pub(crate) fn finish(mut self) -> Report {
        for name in STEPS.iter().skip(self.steps.len()) {
            self.steps.push(Step {
                name,
                outcome: Outcome::Skipped,
                millis: 0.0,
                detail: "not run: an earlier step failed".into(),
                fix: None,
            });
        }
        Report {
            ok: self.steps.iter().all(|s| s.outcome != Outcome::Fail),
            steps: self.steps,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_step_stops_the_run_and_the_rest_are_skipped() {
        let mut run = Run::new();
        run.pass("files", "read".into());
        let Failed = run.fail("tcp", "refused".into(), "check the port");
        let r = run.finish();
        assert!(!r.ok);
        assert_eq!(r.steps.len(), STEPS.len());
        assert_eq!(r.steps[1].outcome, Outcome::Fail);
        assert!(r.steps[2..].iter().all(|s| s.outcome == Outcome::Skipped));
        let mut text = Vec::new();
        r.write(&mut text, false);
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("✗ tcp"), "{text}");
        assert!(text.contains("  fix: check the port"), "{text}");
        assert!(text.ends_with("connection NOT OK\n"), "{text}");
        let mut json = Vec::new();
        r.write(&mut json, true);
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["steps"][1]["fix"], "check the port");
        assert!(v["steps"][0].get("fix").is_none());
    }
}
