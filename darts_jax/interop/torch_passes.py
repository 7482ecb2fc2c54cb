"""The PyTorch side of ``darts_jax.bench_passes``: one kind of pass of our
pt.darts-equivalent search network (``torch_ref``), timed alone. The Hessian
term is pt.darts's finite difference (two alpha gradients at w +- eps v).

    python -m darts_jax.interop.torch_passes --config default --passes hvp --reps 2

Prints one JSON line. Run by ``python -m darts_jax.bench_passes --torch``.
"""

from __future__ import annotations

import argparse
import json

import torch

from darts_jax import bench, bench_passes
from darts_jax.interop import torch_ref as tr


def pass_row(config: str, kind: str, reps: int) -> dict:
    """One PyTorch pass (``bench_passes.PASSES``) of our pt.darts-equivalent network."""
    c, layers, batch, size, channels = bench.SEARCH_CONFIGS[config]
    torch.manual_seed(0)
    model = tr.SearchCNNController(channels, c, bench_passes.N_CLASSES, layers).train()
    images = torch.randn(batch, channels, size, size)
    labels = torch.randint(0, bench_passes.N_CLASSES, (batch,))
    weights = {n: w.detach() for n, w in model.named_weights()}
    alphas = dict(model.named_alphas())
    direction = {n: torch.full_like(w, 1e-3) for n, w in weights.items()}
    eps = 0.01 / torch.cat([d.reshape(-1) for d in direction.values()]).norm()

    def alpha_gradient(params):
        loss = tr._loss(model, {**params, **alphas}, images, labels)
        return torch.autograd.grad(loss, list(alphas.values()))

    def run():
        model.zero_grad(set_to_none=True)
        if kind == "forward":
            with torch.no_grad():
                return model.loss(images, labels)
        if kind == "gradient":
            return model.loss(images, labels).backward()
        if kind == "weight_gradient":
            loss = model.loss(images, labels)
            return torch.autograd.grad(loss, list(model.weights()))
        if kind == "alpha_gradient":
            return alpha_gradient(dict(model.named_weights()))
        shifted = [
            {n: w + sign * eps * direction[n] for n, w in weights.items()} for sign in (1.0, -1.0)
        ]
        g_plus, g_minus = (alpha_gradient(w) for w in shifted)
        return [(p - m) / (2.0 * eps) for p, m in zip(g_plus, g_minus, strict=True)]

    warmup_s, times = bench_passes._timed(run, reps)
    return {
        "framework": "torch",
        "config": config,
        "pass": kind,
        "warmup_s": round(warmup_s, 2),
        "pass_s_min": round(min(times), 4),
        "pass_s_max": round(max(times), 4),
        "peak_mem_gb": round(bench._host_memory_gb()[0], 2),
        "torch": torch.__version__,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="test", choices=sorted(bench.SEARCH_CONFIGS))
    parser.add_argument("--passes", default="gradient", choices=bench_passes.PASSES)
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error(f"--reps must be at least 1, got {args.reps}")
    print(json.dumps(pass_row(args.config, args.passes, args.reps)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
