//! Hybrid pipeline + data parallelism under real `mpirun`: equivalence with serial for both
//! schedules and several layouts, and every rejected layout.
mod common;
use common::*;
use std::time::Duration;

#[test]
fn hybrid_layouts_and_schedules_match_serial() {
    let tmp = tempfile::tempdir().unwrap();
    let serial = serial_reference(tmp.path());
    // (ranks, stages, schedule, boundaries)
    let layouts = [
        (2, 2, "gpipe", "auto"),
        (2, 2, "1f1b", "auto"),
        (4, 2, "gpipe", "[4]"),
        (4, 2, "1f1b", "[4]"),
        (3, 3, "1f1b", "[3, 7]"),
    ];
    for (np, stages, schedule, bounds) in layouts {
        let out = tmp.path().join(format!("h{np}_{stages}_{schedule}"));
        let mut args = equivalence_args("hybrid", &out);
        for s in [
            format!("parallel.stages={stages}"),
            "parallel.micro_batches=4".into(),
            format!("parallel.schedule={schedule}"),
            format!("parallel.stage_boundaries={bounds}"),
        ] {
            args.push("--set".into());
            args.push(s);
        }
        let (o, _) = mpirun(np, &refs(&args));
        assert_ok(&o);
        let s = summary(&out);
        assert_eq!(s["stages"], stages);
        assert_eq!(s["replicas"], np / stages);
        assert_eq!(s["steps"], 50);
        assert_eq!(s["pipeline"]["schedule"], schedule);
        assert_matches_serial(
            &serial,
            &out,
            &format!("hybrid {np} ranks, {stages} stages, {schedule}, boundaries {bounds}"),
        );
    }
}

#[test]
fn one_f_one_b_holds_fewer_activations_than_gpipe() {
    let tmp = tempfile::tempdir().unwrap();
    let mut peaks = Vec::new();
    for schedule in ["gpipe", "1f1b"] {
        let out = tmp.path().join(schedule);
        let args = run_args(
            "hybrid",
            "hybrid_pipeline.yaml",
            &out,
            &[
                "data.train_limit=640",
                "data.test_limit=100",
                "train.epochs=1",
                "parallel.micro_batches=8",
                &format!("parallel.schedule={schedule}"),
            ],
        );
        let (o, _) = mpirun(2, &refs(&args));
        assert_ok(&o);
        let p = summary(&out)["pipeline"]["peak_activation_mb_per_rank"][0]
            .as_f64()
            .unwrap();
        peaks.push(p);
    }
    println!(
        "peak activation MB on stage 0 at 8 micro-batches: gpipe {} 1f1b {}",
        peaks[0], peaks[1]
    );
    assert!(peaks[1] < peaks[0] / 2.0, "{peaks:?}");
}

#[test]
fn bad_layouts_are_refused_on_every_rank() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let cases: Vec<(usize, Vec<&str>, Vec<&str>)> = vec![
        (
            3,
            vec!["parallel.stages=2"],
            vec!["parallel.stages", "do not divide the 3 MPI ranks"],
        ),
        (
            2,
            vec!["parallel.stages=12"],
            vec!["parallel.stages", "only 11 layers"],
        ),
        (
            2,
            vec!["parallel.stages=3", "parallel.stage_boundaries=[3, 3]"],
            vec!["stage_boundaries", "empty"],
        ),
        (
            2,
            vec!["parallel.stages=3", "parallel.stage_boundaries=[7, 3]"],
            vec!["stage_boundaries", "not increasing"],
        ),
        (
            2,
            vec!["parallel.stage_boundaries=[11]"],
            vec!["stage_boundaries", "out of range"],
        ),
        (
            2,
            vec!["parallel.micro_batches=5"],
            vec![
                "parallel.micro_batches",
                "5 does not divide the per-replica batch of 64",
            ],
        ),
        (
            2,
            vec!["parallel.schedule=pipedream"],
            vec!["parallel.schedule", "pipedream", "expected `gpipe` or `1f1b`"],
        ),
    ];
    for (np, sets, expected) in cases {
        let (o, took) = mpirun(
            np,
            &refs(&run_args("hybrid", "hybrid_pipeline.yaml", &out, &sets)),
        );
        let msg = text(&o);
        assert!(!o.status.success(), "{sets:?} should fail: {msg}");
        assert!(took < Duration::from_secs(30), "{sets:?} took {took:?}");
        for e in expected {
            assert!(msg.contains(e), "{sets:?}: expected `{e}` in:\n{msg}");
        }
        assert!(!out.join("summary.json").exists());
    }
}
