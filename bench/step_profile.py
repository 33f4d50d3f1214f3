"""Where a training step's time goes: PyTorch's profiler on partrain's op sequence.

partrain runs libtorch kernels through tch; this script issues the same libtorch ops in the same
order (src/model.rs's forward, the loss, backward, src/trainer.rs's flat-buffer SGD), so that
torch.profiler can attribute a step's time to kernels. Keep it in step with src/model.rs.

    .venv/bin/python bench/step_profile.py [--net mnist|cifar10] [--precision fp32|bf16] [--threads 1]
                                      [--batch 64] [--steps 60] [--no-channels-last] [--rows 20]

Prints the ops by self CPU time (share of the step) and the step time; `--json FILE` also writes
the table.
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F

NETS = {
    # (kind, args): partrain's ordered layer lists (src/model.rs, preset_layers).
    "mnist": ([1, 28, 28], [("conv", 1, 32), ("relu",), ("pool",), ("conv", 32, 64), ("relu",), ("pool",),
                            ("flatten",), ("linear", 3136, 128), ("relu",), ("dropout",), ("linear", 128, 10)]),
    "cifar10": ([3, 32, 32], [("conv", 3, 32), ("relu",), ("pool",), ("conv", 32, 64), ("relu",), ("pool",),
                              ("flatten",), ("linear", 4096, 256), ("relu",), ("linear", 256, 10)]),
}


def is_cl(t):
    s, st = t.shape, t.stride()
    return t.dim() == 4 and st[1] == 1 and st[3] == s[1] and st[2] == s[1] * s[3]


def to_cl(t):
    """model::to_channels_last: NHWC strides, a one-channel tensor re-strided in place."""
    if t.dim() != 4 or is_cl(t):
        return t
    n, c, h, w = t.shape
    if c == 1 and t.is_contiguous():
        return t.as_strided(t.shape, (h * w, 1, w, 1))
    return t.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)


class Net:
    def __init__(self, layers, channels_last, bf16, dropout):
        self.layers, self.cl, self.bf16, self.dropout = layers, channels_last, bf16, dropout
        self.params = []
        for spec in layers:
            if spec[0] == "conv":
                w = torch.empty(spec[2], spec[1], 3, 3).uniform_(-0.1, 0.1)
                self.params += [to_cl(w) if channels_last else w, torch.zeros(spec[2])]
            elif spec[0] == "linear":
                self.params += [torch.empty(spec[2], spec[1]).uniform_(-0.05, 0.05), torch.zeros(spec[2])]
        self.bind_flat()

    def bind_flat(self):
        """grads.rs: every parameter and its .grad are views into one flat buffer each (64-byte spans)."""
        spans, off = [], 0
        for p in self.params:
            spans.append(off)
            off = (off + p.numel() + 15) // 16 * 16
        self.values, self.grads = torch.zeros(off), torch.zeros(off)
        self.velocity = torch.zeros(off)
        for i, (p, o) in enumerate(zip(self.params, spans)):
            v = self.values.as_strided(p.shape, p.stride(), o)
            v.copy_(p)
            v.requires_grad_(True)
            v.grad = self.grads.as_strided(p.shape, p.stride(), o)
            self.params[i] = v

    def cast(self, t):
        return t.to(torch.bfloat16) if self.bf16 else t

    def forward(self, h, train=True):
        it, p = iter(range(len(self.layers))), iter(self.params)
        for i in it:
            kind = self.layers[i][0]
            if kind == "conv":
                w, b = next(p), next(p)
                x = to_cl(h) if self.cl and h.shape[1] > 1 else h
                h = F.conv2d(self.cast(x), self.cast(w), self.cast(b), padding=1)
                if self.cl:
                    h = to_cl(h)
            elif kind == "relu" and i + 1 < len(self.layers) and self.layers[i + 1][0] == "pool":
                next(it)
                h = F.max_pool2d(h, 2).relu()
            elif kind == "relu":
                h = h.relu()
            elif kind == "pool":
                h = F.max_pool2d(h, 2)
            elif kind == "flatten":
                h = h.flatten(1)
            elif kind == "dropout":
                h = F.dropout(h, self.dropout, train) if self.dropout > 0 else h
            elif kind == "linear":
                w, b = next(p), next(p)
                h = F.linear(self.cast(h), self.cast(w), self.cast(b))
        return h.float() if self.bf16 else h

    def sgd(self, lr=0.01, momentum=0.9):
        with torch.no_grad():
            self.velocity.mul_(momentum).add_(self.grads)
            self.values.sub_(self.velocity * lr)
            self.grads.zero_()


def step(net, x, y):
    loss = F.cross_entropy(net.forward(x), y)
    loss.backward()
    net.sgd()
    return loss


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--net", default="mnist", choices=NETS)
    a.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    a.add_argument("--threads", type=int, default=1)
    a.add_argument("--batch", type=int, default=64)
    a.add_argument("--steps", type=int, default=60)
    a.add_argument("--rows", type=int, default=20)
    a.add_argument("--no-channels-last", action="store_true")
    a.add_argument("--by-shape", action="store_true", help="one row per op and input shapes (conv1 vs conv2)")
    a.add_argument("--json")
    args = a.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape, layers = NETS[args.net]
    net = Net(layers, not args.no_channels_last, args.precision == "bf16", 0.25 if args.net == "mnist" else 0.0)
    x = torch.randn(args.batch, *shape)
    y = torch.randint(0, 10, (args.batch,))
    for _ in range(10):
        step(net, x, y)
    t = time.perf_counter()
    for _ in range(args.steps):
        step(net, x, y)
    step_ms = (time.perf_counter() - t) / args.steps * 1e3
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=args.by_shape) as prof:
        for _ in range(args.steps):
            step(net, x, y)
    events = [e for e in prof.key_averages(group_by_input_shape=args.by_shape) if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: -e.self_cpu_time_total)
    def name(e):
        shapes = [s for s in (e.input_shapes or []) if s][:2] if args.by_shape else []
        return e.key + (" " + " ".join("x".join(map(str, s)) for s in shapes) if shapes else "")

    rows = [(name(e), e.self_cpu_time_total / total, e.self_cpu_time_total / args.steps / 1e3, e.count // args.steps) for e in events]
    print(f"{args.net} {args.precision} {'NCHW' if args.no_channels_last else 'channels-last'}, {args.threads} thread(s), "
          f"batch {args.batch}: {step_ms:.2f} ms per step without the profiler ({args.batch / step_ms * 1e3:.0f} images/s)")
    print(f"{'op':<64} {'share':>6} {'ms/step':>8} {'calls':>5}")
    for op, share, ms, calls in rows[: args.rows]:
        print(f"{op[:64]:<64} {share:6.1%} {ms:8.3f} {calls:5d}")
    if args.json:
        json.dump({"step_ms": step_ms, "ops": rows}, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
