//! `partrain plan`: every layout of N nodes x C cores predicted, best first, into plan.csv; with
//! `--target-accuracy`, each layout's predicted time to that accuracy (step time x steps to target
//! at its global batch) decides the order instead of images/s.

use super::calibration::{named_network, Calibration, Link};
use super::layouts::{layouts, Scope};
use super::precision::Precisions;
use super::predict::{eval_seconds, predict, time_to_target, Layout};
use super::remedy::{Remedy, StepFactors};
use super::steps::StepsModel;
use crate::config::Precision;
use crate::plan::averaging::GradSync;
use anyhow::{bail, Result};
use serde::Serialize;

/// `partrain plan`'s question: the config, the cluster, the network, and optionally the target.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    pub config: std::path::PathBuf,
    pub set: Vec<String>,
    /// Node counts to plan for.
    pub nodes: Vec<usize>,
    pub cores_per_node: usize,
    pub calibration: std::path::PathBuf,
    /// A named network between nodes: ib100, eth25, eth10 (default: the calibration's measured
    /// link between nodes, else ib100).
    pub network: Option<String>,
    pub latency_us: Option<f64>,
    pub bandwidth_gbs: Option<f64>,
    pub out: std::path::PathBuf,
    /// Also rank layouts, per-rank batches and accumulation by predicted time to this test
    /// accuracy (percent): step time x steps to target at the layout's global batch.
    pub target_accuracy: Option<f64>,
    /// Steps to target from a measured curve (`partrain converge table`'s CSV).
    pub curve: Option<std::path::PathBuf>,
    /// Steps to target from the noise-scale model fitted to this run folder (its steps to target
    /// and noise scale).
    pub run: Option<std::path::PathBuf>,
    /// How often the predicted runs evaluate (their time counts, as in MLPerf), in epochs.
    pub eval_every_epochs: f64,
    /// Each remedy's steps to target over plain averaging's (bench/remedies.sh's CSV): the
    /// target scope then weighs every layout with each measured remedy.
    pub remedies: Option<std::path::PathBuf>,
    /// bf16's steps to target against fp32's (bench/precision_steps.sh's CSV): the target scope
    /// then also weighs every layout in bf16 where the calibration measured bf16 compute.
    pub precision_steps: Option<std::path::PathBuf>,
}

/// One row of `plan.csv`.
#[derive(Debug, Clone, Serialize)]
pub struct PlanRow {
    pub nodes: usize,
    pub scope: String,
    pub strategy: String,
    pub ranks_per_node: usize,
    pub threads: usize,
    pub stages: usize,
    pub replicas: usize,
    pub micro_batches: usize,
    pub schedule: String,
    pub placement: String,
    pub averaging: String,
    /// The remedy for communication overhead (`plain`, `overlap`, `bf16`, `powersgd2`, ...).
    pub remedy: String,
    /// The compute precision (`fp32`, `bf16`) the step is predicted in.
    pub precision: String,
    pub global_batch: usize,
    pub images_per_s: f64,
    pub speedup: f64,
    pub efficiency: f64,
    pub step_ms: f64,
    pub pipeline_ms: f64,
    pub averaging_ms: f64,
    pub memory_mb_per_rank: f64,
    pub extrapolated: bool,
    /// Images per replica and step (micro_batch x micro_batches) and per micro-batch.
    pub per_replica_batch: usize,
    pub micro_batch: usize,
    /// With --target-accuracy: steps and epochs to it at this global batch, the seconds of one
    /// evaluation, and step time x steps + evaluations (None where the steps are unknown).
    pub steps_to_target: Option<f64>,
    pub epochs_to_target: Option<f64>,
    pub eval_s: f64,
    pub time_to_target_s: Option<f64>,
}

/// What `plan` found: every layout predicted, the batches refused, and where steps to target come from.
pub struct PlanOutput {
    pub rows: Vec<PlanRow>,
    pub refused: Vec<(String, super::layouts::Refusal)>,
    pub steps_model: Option<StepsModel>,
    /// Whether bf16 was weighed, and why (or why not).
    pub precision_note: String,
}

impl PlanOptions {
    pub fn network(&self, cal: &Calibration) -> Result<Link> {
        match (&self.network, self.latency_us, self.bandwidth_gbs) {
            (Some(n), _, _) => named_network(n),
            (None, Some(latency_us), Some(bandwidth_gbs)) => Ok(Link {
                latency_us,
                bandwidth_gbs,
            }),
            _ => Ok(cal.inter_node.unwrap_or(named_network("ib100")?)),
        }
    }

    fn steps_model(&self) -> Result<Option<StepsModel>> {
        let Some(target) = self.target_accuracy else {
            return Ok(None);
        };
        if !(target > 0.0 && target <= 100.0) {
            bail!("--target-accuracy: a test accuracy in percent, in (0, 100], got {target}");
        }
        if self.eval_every_epochs.is_nan() || self.eval_every_epochs <= 0.0 {
            bail!(
                "--eval-every-epochs: must be positive, got {}",
                self.eval_every_epochs
            );
        }
        Ok(Some(match (&self.curve, &self.run) {
            (Some(curve), _) => StepsModel::from_curve(curve, target)?,
            (None, Some(run)) => StepsModel::from_run(run, target)?,
            (None, None) => bail!(
                "--target-accuracy needs steps to target: --curve FILE (bash bench/converge.sh and partrain converge \
                 table make one) or --run DIR (a run trained to that target with train.target_accuracy)"
            ),
        }))
    }

    /// The calibration, refused unless it was measured for `net`.
    fn calibration_of(&self, net: &crate::netspec::NetSpec) -> Result<Calibration> {
        let cal = Calibration::load(&self.calibration)?;
        if !cal.is_of(net) {
            bail!(
                "--calibration: {} was measured for {} (net {}), and the config's net is {}",
                self.calibration.display(),
                cal.preset,
                cal.net_id.as_deref().unwrap_or("of before nets had identities"),
                net.label()
            );
        }
        Ok(cal)
    }

    pub fn run(&self) -> Result<PlanOutput> {
        let cfg = crate::config::load(&self.config, &self.set)?;
        let net = cfg.net()?;
        let cal = self.calibration_of(&net)?;
        let steps_model = self.steps_model()?;
        let factors = match &self.remedies {
            Some(p) => StepFactors::read(p)?,
            None => StepFactors::default(),
        };
        let precisions = Precisions::resolve(&cal, cfg.train.precision, self.precision_steps.as_deref())?;
        let base = Predictor {
            cal: &precisions.config.1,
            precision: precisions.config.0,
            precision_factor: 1.0,
            network: self.network(&cal)?,
            cfg: &cfg,
            scope: Scope::Strong,
            model: steps_model.as_ref(),
            sizes: cfg.data.sizes(),
            eval_every: self.eval_every_epochs,
            factors: &factors,
        };
        let mut scopes = vec![Scope::Strong, Scope::Weak];
        scopes.extend(steps_model.is_some().then_some(Scope::Target));
        let (mut rows, mut refused) = (Vec::new(), Vec::new());
        for &nodes in &self.nodes {
            for &scope in &scopes {
                let mut weighed = vec![Predictor { scope, ..base }];
                if let (Scope::Target, Some((cal, factor))) = (scope, &precisions.bf16) {
                    weighed.push(Predictor {
                        cal,
                        precision: Precision::Bf16,
                        precision_factor: *factor,
                        scope,
                        ..base
                    });
                }
                for ctx in weighed {
                    let (found, no) = ctx.layouts(nodes, self.cores_per_node, &net.layers);
                    rows.extend(found.iter().map(|l| ctx.row(l)));
                    refused.extend(no.into_iter().map(|r| (scope.name().to_string(), r)));
                }
            }
        }
        rows.sort_by(|a, b| (a.nodes, &a.scope).cmp(&(b.nodes, &b.scope)).then(order(a, b)));
        crate::util::atomic::write_csv(&self.out, &rows)?;
        Ok(PlanOutput {
            rows,
            refused,
            steps_model,
            precision_note: precisions.note,
        })
    }
}

/// Best first: the least predicted time to target in the target scope (unknown last), else the
/// most images/s.
fn order(a: &PlanRow, b: &PlanRow) -> std::cmp::Ordering {
    if a.scope == Scope::Target.name() {
        let t = |r: &PlanRow| r.time_to_target_s.unwrap_or(f64::INFINITY);
        return t(a).total_cmp(&t(b));
    }
    b.images_per_s.total_cmp(&a.images_per_s)
}

/// What every row of one (nodes, scope, precision) is predicted with.
#[derive(Clone, Copy)]
struct Predictor<'a> {
    /// The calibration with the precision's compute, and bf16's steps to target over fp32's.
    cal: &'a Calibration,
    precision: Precision,
    precision_factor: f64,
    network: Link,
    cfg: &'a crate::config::Config,
    scope: Scope,
    model: Option<&'a StepsModel>,
    /// Training and test images.
    sizes: (usize, usize),
    eval_every: f64,
    factors: &'a StepFactors,
}

/// Every layout with several replicas once per remedy whose steps to target were measured
/// (plain always); one replica has nothing to average.
fn with_remedies(
    found: Vec<Layout>,
    factors: &StepFactors,
    layers: &[crate::model::LayerSpec],
) -> Vec<Layout> {
    let mut out = Vec::with_capacity(found.len());
    for l in found {
        for remedy in crate::perf::remedy::ALL {
            if remedy != Remedy::Plain && (l.replicas() == 1 || factors.factor(remedy).is_none()) {
                continue;
            }
            let mut v = l.clone();
            v.remedy = remedy;
            v.traffic = remedy.traffic(layers);
            match remedy {
                Remedy::Plain => {}
                Remedy::Overlap => v.grad_sync = GradSync::Overlapped,
                Remedy::Stale => v.grad_sync = GradSync::Stale,
                Remedy::Bf16 | Remedy::PowerSgd(_) => v.grad_sync = GradSync::Allreduce,
                Remedy::PostLocal(k) => {
                    v.grad_sync = GradSync::WeightAverage;
                    v.average_every = k;
                }
            }
            out.push(v);
        }
    }
    out
}

impl Predictor<'_> {
    /// The layouts of `nodes` x `cores` in this scope (in the target scope once per remedy), and
    /// those refused.
    fn layouts(
        &self,
        nodes: usize,
        cores: usize,
        layers: &[crate::model::LayerSpec],
    ) -> (Vec<Layout>, Vec<super::layouts::Refusal>) {
        let (found, no) = layouts(
            self.cfg.train.batch_size,
            self.cal,
            (nodes, cores),
            self.scope,
            self.sizes.0,
        );
        match self.scope {
            Scope::Target => (with_remedies(found, self.factors, layers), no),
            _ => (found, no),
        }
    }

    fn row(&self, l: &Layout) -> PlanRow {
        let mut r = row(l, self.cal, self.network, self.cfg, self.scope.name());
        r.precision = self.precision.name().into();
        let (train, test) = self.sizes;
        r.eval_s = eval_seconds(l, self.cal, test);
        let factor = self.factors.factor(l.remedy).unwrap_or(1.0);
        r.steps_to_target = self
            .model
            .and_then(|m| m.steps(l.global_batch))
            .map(|s| s * factor * self.precision_factor);
        // Post-local SGD averages gradients every step for its warm-up epoch: those steps cost
        // plain averaging's.
        if let (Remedy::PostLocal(_), Some(steps)) = (l.remedy, r.steps_to_target) {
            let mut plain = l.clone();
            (plain.remedy, plain.traffic, plain.average_every, plain.grad_sync) =
                (Remedy::Plain, 1.0, 1, GradSync::Allreduce);
            let warm = (train as f64 / l.global_batch as f64).min(steps);
            let plain_ms = row(&plain, self.cal, self.network, self.cfg, self.scope.name()).step_ms;
            r.step_ms = (warm * plain_ms + (steps - warm) * r.step_ms) / steps;
        }
        r.epochs_to_target = r
            .steps_to_target
            .map(|s| s * l.global_batch as f64 / train as f64);
        r.time_to_target_s = r.steps_to_target.zip(r.epochs_to_target).map(|(steps, epochs)| {
            time_to_target(
                r.step_ms / 1e3,
                steps,
                (epochs / self.eval_every).ceil(),
                r.eval_s,
            )
        });
        r
    }
}

fn row(l: &Layout, cal: &Calibration, network: Link, cfg: &crate::config::Config, scope: &str) -> PlanRow {
    let p = predict(l, cal, network);
    // The serial baseline at the batch each of its steps would take: the global batch (strong)
    // or the per-replica batch (weak).
    let base_batch = if scope == "strong" {
        l.global_batch
    } else {
        cfg.train.batch_size.min(l.global_batch / l.replicas())
    };
    let speedup = p.images_per_s / cal.serial_images_per_s(base_batch);
    PlanRow {
        nodes: l.nodes,
        scope: scope.into(),
        strategy: l.strategy.clone(),
        ranks_per_node: l.ranks_per_node,
        threads: l.threads,
        stages: l.stages,
        replicas: l.replicas(),
        micro_batches: l.micro_batches,
        schedule: l.schedule.name().into(),
        placement: if l.pipeline_in_node {
            "pipeline_in_node"
        } else {
            "replicas_in_node"
        }
        .into(),
        averaging: l.grad_sync.name().into(),
        remedy: l.remedy.name(),
        precision: String::new(),
        global_batch: l.global_batch,
        images_per_s: p.images_per_s,
        speedup,
        efficiency: speedup / (l.nodes * l.ranks_per_node * l.threads) as f64,
        step_ms: p.step_s * 1e3,
        pipeline_ms: p.pipeline_s * 1e3,
        averaging_ms: p.averaging_s * 1e3,
        memory_mb_per_rank: p.memory_mb_per_rank,
        extrapolated: p.extrapolated,
        per_replica_batch: l.global_batch / l.replicas(),
        micro_batch: l.global_batch / l.replicas() / l.micro_batches,
        steps_to_target: None,
        epochs_to_target: None,
        eval_s: 0.0,
        time_to_target_s: None,
    }
}
