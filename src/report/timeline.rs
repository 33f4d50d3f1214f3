//! `partrain timeline RUN_DIR`: a traced run's `trace.json` drawn as one row per rank.

/// `partrain timeline RUN_DIR`: a picture of a run's trace.json: one row per rank, a bar per span
/// (forward, backward, messages, averaging, waits), over a window of steps.
#[derive(Debug, Clone)]
pub struct TimelineOptions {
    /// The run folder (with trace.json), or the trace file itself.
    pub run: std::path::PathBuf,
    /// The first step shown (1-based) and how many.
    pub from_step: usize,
    pub steps: usize,
    /// Default: timeline.png next to trace.json.
    pub out: Option<std::path::PathBuf>,
}

impl TimelineOptions {
    pub fn run(&self) -> anyhow::Result<std::path::PathBuf> {
        use anyhow::Context;
        let file = if self.run.is_dir() {
            self.run.join("trace.json")
        } else {
            self.run.clone()
        };
        let doc: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&file)
                .with_context(|| format!("cannot read {} (run with --trace)", file.display()))?,
        )
        .with_context(|| format!("{}: not JSON", file.display()))?;
        let events: Vec<&serde_json::Value> = doc["traceEvents"]
            .as_array()
            .with_context(|| format!("{}: no traceEvents", file.display()))?
            .iter()
            .filter(|e| e["ph"] == "X")
            .collect();
        let f = |e: &serde_json::Value, k: &str| e[k].as_f64().unwrap_or(0.0);
        let rank = |e: &serde_json::Value| e["tid"].as_u64().unwrap_or(0) as usize;
        // The window: rank 0's steps from_step .. from_step + steps.
        let steps: Vec<&&serde_json::Value> = events
            .iter()
            .filter(|e| e["cat"] == "step" && rank(e) == 0)
            .collect();
        let first = steps
            .get(self.from_step.saturating_sub(1))
            .context("fewer steps in the trace than --from-step")?;
        let last = steps
            .get(self.from_step + self.steps - 2)
            .unwrap_or(steps.last().expect("a step"));
        let (t0, t1) = (f(first, "ts"), f(last, "ts") + f(last, "dur"));
        let ranks = events.iter().map(|e| rank(e)).max().unwrap_or(0) + 1;
        let out = self
            .out
            .clone()
            .unwrap_or_else(|| file.with_file_name("timeline.png"));
        let bars: Vec<super::plots::Span> = events
            .iter()
            .filter(|ev| f(ev, "ts") + f(ev, "dur") >= t0 && f(ev, "ts") <= t1)
            .filter_map(|ev| {
                let kind = super::plots::TIMELINE_KINDS
                    .iter()
                    .position(|(k, _)| ev["cat"] == *k)?;
                let start = ((f(ev, "ts") - t0) / 1e3).max(0.0);
                Some(super::plots::Span {
                    rank: rank(ev),
                    kind,
                    start,
                    end: (f(ev, "ts") + f(ev, "dur") - t0) / 1e3,
                })
            })
            .collect();
        let title = format!(
            "Timeline, steps {}..{} (rank 0's clock)",
            self.from_step,
            self.from_step + self.steps - 1
        );
        crate::util::atomic::write_with(&out, |tmp| {
            super::plots::timeline(tmp, &title, ranks, (t1 - t0) / 1e3, &bars)
        })?;
        Ok(out)
    }
}
