//! `partrain report` and what it draws: the speedup and time-to-target tables from finished runs,
//! the plots, the steps-to-target curve (`partrain converge`).

mod accuracy;
mod chart;
pub mod converge;
pub mod plots;
mod runs;
pub mod style;
pub mod table;
pub mod timeline;

use crate::util::atomic;
use anyhow::Result;
use std::path::{Path, PathBuf};
use table::{markdown, rows, write_csv, Predictor, Row, RunRecord};

/// Writes the tables to `out/metrics/` and the plots to `out/plots/` (each file atomically);
/// returns the files written.
pub fn write(records: &[RunRecord], out: &Path, predictor: Option<&Predictor>) -> Result<Vec<PathBuf>> {
    let (metrics, plots_dir) = (out.join("metrics"), out.join("plots"));
    std::fs::create_dir_all(&metrics)?;
    std::fs::create_dir_all(&plots_dir)?;
    let all = rows(records, predictor);
    let notes: String = runs::overlaps(records)
        .iter()
        .map(|n| format!("\nNote: {n}.\n"))
        .collect();
    let mut written = Vec::new();
    let mut emit = |name: &str, rows: &[&Row]| -> Result<()> {
        let (csv, md) = (
            metrics.join(format!("{name}.csv")),
            metrics.join(format!("{name}.md")),
        );
        write_csv(&csv, rows)?;
        atomic::write(&md, (markdown(rows) + &notes).as_bytes())?;
        written.extend([csv, md]);
        Ok(())
    };
    emit("speedup_table", &all.iter().collect::<Vec<_>>())?;
    for kind in ["strong", "weak"] {
        let sel: Vec<&Row> = all
            .iter()
            .filter(|r| r.scaling == kind || r.scaling == "baseline")
            .collect();
        emit(&format!("{kind}_scaling"), &sel)?;
    }
    let mut draw = |name: &str, f: &dyn Fn(&Path) -> Result<()>| -> Result<()> {
        let p = plots_dir.join(name);
        atomic::write_with(&p, |tmp| f(tmp))?;
        written.push(p);
        Ok(())
    };
    for spec in plots::SCALING_PLOTS {
        draw(spec.file, &|p| plots::scaling_plot(&all, p, &spec))?;
    }
    draw("loss_curves.png", &|p| plots::loss_plot(records, p))?;
    draw("accuracy_vs_time.png", &|p| {
        accuracy::accuracy_time_plot(records, p)
    })?;
    draw("training_comparison.png", &|p| accuracy::comparison_plot(&all, p))?;
    draw("time_breakdown.png", &|p| plots::breakdown_plot(records, p))?;
    Ok(written)
}
