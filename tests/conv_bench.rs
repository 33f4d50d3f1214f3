//! `partrain conv-bench` (seed 003) under mpirun: strong scaling splits the batch, weak scaling
//! repeats it per rank, and the tables record one row per rank count.
mod common;
use common::*;

#[test]
fn strong_and_weak_tables_for_1_and_2_ranks() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().to_str().unwrap();
    for np in [1, 2] {
        for mode in ["strong", "weak"] {
            let (o, _) = mpirun(
                np,
                &[
                    "conv-bench",
                    "--case",
                    "tiny",
                    "--mode",
                    mode,
                    "--batch",
                    "8",
                    "--size",
                    "64",
                    "--out",
                    out,
                ],
            );
            assert_ok(&o);
        }
    }
    let rows = |mode: &str| -> Vec<std::collections::HashMap<String, String>> {
        csv::Reader::from_path(tmp.path().join(format!("conv_bench_tiny_{mode}.csv")))
            .unwrap()
            .deserialize()
            .map(|r| r.unwrap())
            .collect()
    };
    let strong = rows("strong");
    assert_eq!(strong.len(), 2);
    assert_eq!(strong[0]["local_batch"], "8");
    assert_eq!(strong[1]["local_batch"], "4;4");
    assert_eq!(strong[1]["output_shape"], "(8, 3, 62, 62)");
    assert_eq!(strong[1]["memory_mb_per_rank"].split(';').count(), 2);
    let weak = rows("weak");
    assert_eq!(weak[1]["local_batch"], "8;8");
    assert_eq!(weak[1]["output_shape"], "(16, 3, 62, 62)");
    let md = std::fs::read_to_string(tmp.path().join("conv_bench_tiny_weak.md")).unwrap();
    assert!(
        md.contains("| # Processes |") && md.contains("(16, 3, 62, 62)"),
        "{md}"
    );
    // Bad arguments are refused on every rank.
    let (o, _) = mpirun(2, &["conv-bench", "--mode", "sideways", "--out", out]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("invalid value 'sideways' for '--mode <MODE>'")
            && text(&o).contains("expected strong or weak"),
        "{}",
        text(&o)
    );
}
