"""PyTorch DDP to a target accuracy with one of DDP's own communication hooks, beside partrain's
remedies in bench/remedies.sh (same net, initialisation, data, sharding, recipe and evaluation
cadence; one rank per emulated node, launched by mpirun through the cluster):

    bash scripts/cluster.sh exec mpirun --hostfile $PARTRAIN_CLUSTER/hostfile -np 4 \
        --map-by ppr:1:node --bind-to none .venv/bin/python bench/ddp_to_target.py \
        --hook powersgd --rank 2 --out OUT.json

Hooks: `none` (DDP's all-reduce), `bf16` (bf16_compress_hook), `powersgd` (powerSGD_hook with
`--rank`, `--start` plain steps first; one bucket: over gloo the hook aborts when DDP makes two,
"Received data size doesn't match expected size"). The default recipe is partrain's linear-cos:
SGD with momentum 0.9, the rate 0.01 scaled linearly from a batch of 64, a linear warm-up over
the first epoch from 0.01, cosine decay to 0 at `--epochs`. configs/fastest.yaml's recipe
(bench/fastest.sh) is

    --optimizer adam --betas 0.9 0.99 --lr 0.004 --lr-scaling none --warmup-epochs 0.2
    --warmup-start-factor 0.1 --decay-epochs 1.25 --epochs 2 --dropout 0 --batch 64
    --eval-every 50 --eval-after 350 [--bf16]

(`--bf16`: autocast to bfloat16 on the CPU, PyTorch's mixed precision). Evaluations on the whole
test set every `--eval-every` steps from step `--eval-after` and at each epoch's end count in the
clock (MLPerf's rule, as partrain's). Writes a JSON with the time and steps to the target, the best
accuracy and the training images/s; `--save FILE` also the final weights (safetensors).
"""
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from reference import MnistCnn, load  # noqa: E402


def lr_at(step, a, steps_per_epoch, global_batch):
    """partrain's LrSchedule (src/plan/optim.rs): the scaled peak, a warm-up in epochs from `lr`
    (or a fraction of the peak) and cosine decay to 0 at `--decay-epochs` (else `--epochs`)."""
    peak = a.lr * global_batch / 64 if a.lr_scaling == "linear" else a.lr
    base = a.lr if a.warmup_start_factor is None else a.warmup_start_factor * peak
    warm = max(1, round(a.warmup_epochs * steps_per_epoch)) if a.warmup_epochs > 0 else 0
    if step < warm:
        return base + (peak - base) * step / warm
    decay = a.decay_epochs if a.decay_epochs is not None else a.epochs
    total = max(round(decay * steps_per_epoch), warm + 1)
    progress = min((step - warm) / (total - warm), 1.0)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def evaluate(model, xt, yt, rank, world):
    """Accuracy on the whole test set, each rank its share, summed by an all-reduce."""
    n = xt.shape[0]
    lo, hi = n * rank // world, n * (rank + 1) // world
    model.eval()
    with torch.no_grad():
        correct = sum(
            (model(xt[s : min(s + 500, hi)]).argmax(1) == yt[s : min(s + 500, hi)]).sum().item()
            for s in range(lo, hi, 500)
        )
    model.train()
    t = torch.tensor([float(correct)])
    dist.all_reduce(t)
    return 100.0 * t.item() / n


def register_hook(model, a):
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook

    if a.hook == "bf16":
        model.register_comm_hook(None, default_hooks.bf16_compress_hook)
    elif a.hook == "powersgd":
        state = powerSGD_hook.PowerSGDState(
            process_group=None, matrix_approximation_rank=a.rank, start_powerSGD_iter=a.start
        )
        model.register_comm_hook(state, powerSGD_hook.powerSGD_hook)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--hook", choices=["none", "bf16", "powersgd"], default="none")
    p.add_argument("--rank", type=int, default=2, help="PowerSGD's rank")
    p.add_argument("--start", type=int, default=100, help="PowerSGD: plain steps first")
    p.add_argument("--data", default="data/mnist")
    p.add_argument("--batch", type=int, default=64, help="per rank")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--warmup-start-factor", type=float, default=None)
    p.add_argument("--decay-epochs", type=float, default=None)
    p.add_argument("--lr-scaling", choices=["linear", "none"], default="linear")
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    p.add_argument("--betas", type=float, nargs=2, default=[0.9, 0.999])
    p.add_argument("--dropout", type=float, default=0.25)
    p.add_argument("--bf16", action="store_true", help="autocast to bfloat16")
    p.add_argument("--eval-after", type=int, default=0)
    p.add_argument("--save", default=None, help="write the final weights here (safetensors)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--target", type=float, default=99.0)
    p.add_argument("--eval-every", type=int, default=58)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(a.seed)
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", 0))
    world = int(os.environ.get("OMPI_COMM_WORLD_SIZE", 1))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", rank=rank, world_size=world)

    xs, ys, xt, yt = load("mnist", a.data, 60000, 10000)
    xs = xs.contiguous(memory_format=torch.channels_last)
    xt = xt.contiguous(memory_format=torch.channels_last)
    model = MnistCnn(dropout=a.dropout).to(memory_format=torch.channels_last)
    bucket_mb = 100 if a.hook == "powersgd" else 25
    model = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=bucket_mb)
    register_hook(model, a)
    if a.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=a.lr, betas=tuple(a.betas), foreach=True)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9)

    global_batch = a.batch * world
    n = xs.shape[0]
    steps_per_epoch = n // global_batch
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16)
    clock, train_s, step, best, acc = 0.0, 0.0, 0, 0.0, 0.0
    reached = None
    for epoch in range(a.epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(a.seed + epoch))
        for s in range(steps_per_epoch):
            t0 = time.perf_counter()
            idx = order[s * global_batch + rank * a.batch : s * global_batch + (rank + 1) * a.batch]
            for group in opt.param_groups:
                group["lr"] = lr_at(step, a, steps_per_epoch, global_batch)
            opt.zero_grad(set_to_none=False)
            with autocast:
                loss = F.cross_entropy(model(xs.index_select(0, idx)), ys.index_select(0, idx))
            loss.backward()
            opt.step()
            step += 1
            dt = time.perf_counter() - t0
            train_s += dt
            clock += dt
            if (step % a.eval_every == 0 and step >= a.eval_after) or s + 1 == steps_per_epoch:
                t0 = time.perf_counter()
                with autocast:
                    acc = evaluate(model, xt, yt, rank, world)
                clock += time.perf_counter() - t0
                best = max(best, acc)
                if rank == 0:
                    print(f"step {step} epoch {step / steps_per_epoch:.2f} accuracy {acc:.2f} clock {clock:.1f} s", flush=True)
                if acc >= a.target:
                    reached = {"time_to_target_s": clock, "steps_to_target": step}
                    break
        if reached:
            break
    if rank == 0:
        out = {
            "implementation": f"pytorch-ddp-{a.hook}" + (f"{a.rank}" if a.hook == "powersgd" else "")
            + ("-bf16" if a.bf16 else ""),
            "optimizer": a.optimizer,
            "final_accuracy": acc,
            "target_accuracy": a.target,
            "time_to_target_s": reached and reached["time_to_target_s"],
            "steps_to_target": reached and reached["steps_to_target"],
            "best_accuracy": best,
            "steps": step,
            "samples_per_second": step * global_batch / train_s,
            "step_seconds": train_s / step,
            "world_size": world,
            "link": os.environ.get("PARTRAIN_LINK"),
        }
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)
        if a.save:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in model.module.state_dict().items()}, a.save)
    sys.stdout.flush()
    # Tearing down the gloo process group aborts in torch 2.13 (bench/reference.py): leave without it.
    os._exit(0)


if __name__ == "__main__":
    main()
