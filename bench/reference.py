"""PyTorch references for bench/run.sh: the same nets, initialisation (PyTorch's defaults, which
partrain reproduces), data (resident normalised tensors), hyper-parameters (SGD 0.01, momentum 0.9)
and batch as partrain, trained for one pass over the same images.

    python bench/reference.py --mode eager|channels_last|bf16_cl --threads T --out OUT.json
    mpirun -np 2 python bench/reference.py --mode ddp|mpi4py|ddp_cl|mpi4py_cl --out OUT.json

Modes:
  eager          plain PyTorch eager, fp32, NCHW
  channels_last  eager with channels-last input and model
  bf16_cl        bf16 autocast (CPU) + channels-last
  ddp            DistributedDataParallel over gloo (seed 001), one rank per process
  mpi4py         gradients flattened into one buffer and MPI Allreduce'd with mpi4py (seed 000)
  ddp_cl, mpi4py_cl  the same two with channels-last input and model (PyTorch at its best)

Writes a JSON like partrain's summary: samples_per_second, peak_rss_mb (per rank),
first_step_seconds (from process start), final_test_accuracy, train_seconds.
"""
import argparse
import json
import os
import resource
import struct
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def seconds_since_process_start():
    with open("/proc/self/stat") as f:
        after = f.read().rsplit(")", 1)[1].split()
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return uptime - float(after[19]) / os.sysconf("SC_CLK_TCK")


class MnistCnn(nn.Module):
    def __init__(self, dropout=0.25):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(3136, 128)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc2(self.dropout(F.relu(self.fc1(x))))


class CifarCnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(4096, 256)
        self.fc2 = nn.Linear(256, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc2(F.relu(self.fc1(x)))


def read_idx(path, limit):
    with open(path, "rb") as f:
        data = f.read()
    magic, n = struct.unpack(">II", data[:8])
    if magic == 0x803:
        rows, cols = struct.unpack(">II", data[8:16])
        t = torch.frombuffer(bytearray(data[16:]), dtype=torch.uint8).reshape(n, 1, rows, cols)
    else:
        t = torch.frombuffer(bytearray(data[8:]), dtype=torch.uint8).long()
    return t[:limit]


def read_cifar(files, limit):
    raw = b"".join(open(f, "rb").read() for f in files)
    recs = torch.frombuffer(bytearray(raw), dtype=torch.uint8).reshape(-1, 3073)[:limit]
    return recs[:, 1:].reshape(-1, 3, 32, 32), recs[:, 0].long()


def load(dataset, data_dir, train_limit, test_limit):
    if dataset == "mnist":
        xs = read_idx(f"{data_dir}/train-images-idx3-ubyte", train_limit).float() / 255.0
        ys = read_idx(f"{data_dir}/train-labels-idx1-ubyte", train_limit)
        xt = read_idx(f"{data_dir}/t10k-images-idx3-ubyte", test_limit).float() / 255.0
        yt = read_idx(f"{data_dir}/t10k-labels-idx1-ubyte", test_limit)
        mean, std = torch.tensor([0.1307]), torch.tensor([0.3081])
    else:
        xs, ys = read_cifar([f"{data_dir}/data_batch_{i}.bin" for i in range(1, 6)], train_limit)
        xt, yt = read_cifar([f"{data_dir}/test_batch.bin"], test_limit)
        xs, xt = xs.float() / 255.0, xt.float() / 255.0
        mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2470, 0.2435, 0.2616])
    norm = lambda x: ((x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)).contiguous()
    return norm(xs), ys, norm(xt), yt


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mode", required=True, choices=["eager", "channels_last", "bf16_cl", "ddp", "mpi4py", "ddp_cl", "mpi4py_cl"])
    p.add_argument("--dataset", default="mnist", choices=["mnist", "cifar10"])
    p.add_argument("--data", default="data/mnist")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=64, help="per rank")
    p.add_argument("--train-limit", type=int, default=12800)
    p.add_argument("--test-limit", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)

    rank, world, comm = 0, 1, None
    if a.mode.startswith("mpi4py"):
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        rank, world = comm.Get_rank(), comm.Get_size()
    elif a.mode.startswith("ddp"):
        import torch.distributed as dist

        rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", 0))
        world = int(os.environ.get("OMPI_COMM_WORLD_SIZE", 1))
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29517")
        dist.init_process_group("gloo", rank=rank, world_size=world)

    xs, ys, xt, yt = load(a.dataset, a.data, a.train_limit, a.test_limit)
    model = MnistCnn() if a.dataset == "mnist" else CifarCnn()
    channels_last = a.mode in ("channels_last", "bf16_cl", "ddp_cl", "mpi4py_cl")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        xs = xs.contiguous(memory_format=torch.channels_last)
    if a.mode.startswith("ddp"):
        model = nn.parallel.DistributedDataParallel(model)
    params = list(model.parameters())
    if comm is not None:
        # Rank 0's weights everywhere, as partrain broadcasts them.
        for prm in params:
            buf = prm.data.contiguous().numpy()  # a copy for channels-last weights
            comm.Bcast(buf, root=0)
            prm.data.copy_(torch.from_numpy(buf).view_as(prm))
        flat = torch.zeros(sum(q.numel() for q in params))
        reduced = torch.zeros_like(flat)
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)

    global_batch = a.batch * world
    n = xs.shape[0]
    steps = n // global_batch
    first_step = None
    t_train = 0.0
    seen = 0
    for epoch in range(a.epochs):
        g = torch.Generator().manual_seed(a.seed + epoch)
        order = torch.randperm(n, generator=g)
        t0 = time.perf_counter()
        for s in range(steps):
            idx = order[s * global_batch + rank * a.batch : s * global_batch + (rank + 1) * a.batch]
            x, y = xs.index_select(0, idx), ys.index_select(0, idx)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            opt.zero_grad(set_to_none=False)
            if a.mode == "bf16_cl":
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    out = model(x)
                loss = F.cross_entropy(out.float(), y)
            else:
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            if comm is not None:
                from mpi4py import MPI

                off = 0
                for q in params:
                    k = q.numel()
                    flat[off : off + k].copy_(q.grad.reshape(-1))
                    off += k
                comm.Allreduce(flat.numpy(), reduced.numpy(), op=MPI.SUM)
                reduced /= world
                off = 0
                for q in params:
                    k = q.numel()
                    q.grad.copy_(reduced[off : off + k].view_as(q))
                    off += k
            opt.step()
            seen += global_batch
            if first_step is None:
                first_step = seconds_since_process_start()
        t_train += time.perf_counter() - t0

    model.eval()
    with torch.no_grad():
        if a.mode == "bf16_cl":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                pred = model(xt.contiguous(memory_format=torch.channels_last)).float().argmax(1)
        else:
            pred = model(xt).argmax(1)
    accuracy = 100.0 * (pred == yt).float().mean().item()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    if comm is not None:
        rss_all = comm.gather(rss, root=0)
        t_all = comm.gather(t_train, root=0)
    elif a.mode.startswith("ddp"):
        import torch.distributed as dist

        rss_all = [None] * world
        t_all = [None] * world
        dist.all_gather_object(rss_all, rss)
        dist.all_gather_object(t_all, t_train)
    else:
        rss_all, t_all = [rss], [t_train]
    if rank == 0:
        t = max(t_all)
        json.dump(
            {
                "implementation": f"pytorch-{a.mode}",
                "samples_per_second": seen / t,
                "train_seconds": t,
                "peak_rss_mb": rss_all,
                "first_step_seconds": first_step,
                "final_test_accuracy": accuracy,
                "world_size": world,
                "threads_per_rank": a.threads,
            },
            open(a.out, "w"),
            indent=1,
        )
    if a.mode.startswith("ddp"):
        # Tearing down the gloo process group aborts here ("terminate called without an active
        # exception", torch 2.13); the results are written, so leave without the teardown.
        sys.stdout.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
