"""PyTorch step timing for comparison with darts_jax.bench (pt.darts-equivalent networks).

    python -m darts_jax.interop.torch_bench --net search --config test --order second --steps 3
    python -m darts_jax.interop.torch_bench --net final --config default --steps 10

search: one full search step (alpha Adam step with the chosen gradient, then
the clipped SGD weight step) on random data; config test = C 4, 5 layers,
batch 4, 16x16; default = C 16, 8 layers, batch 64, 32x32; quickstart = C 8,
5 layers, batch 32, 8x8, one channel. order: first, second (exact, double
backward) or fd (corrected finite difference).
final: AugmentCNN with auxiliary head and DARTS_V2 on 32x32 inputs (test = C 4,
5 layers, batch 8; default = C 36, 20 layers, batch 96),
drop path 0.1, loss CE + 0.4 CE_aux, clipped SGD step.
The configs are darts_jax.bench's, and so are ``--init_channels``,
``--layers``, ``--batch`` and ``--image_size`` (0 keeps the config's).

Runs on CUDA when available, else CPU. Prints one JSON line: warmup_s (model
setup and the first step), step_s (mean of --steps further steps),
images_per_s (search counts train + val images), peak_mem_gb.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch
import torch.nn.functional as F

from darts_jax import bench
from darts_jax.genotypes import DARTS_V2
from darts_jax.interop import torch_ref as tr

N_CLASSES = 10


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _search(network, args, device):
    c, layers, batch, size, channels = network
    model = tr.SearchCNNController(channels, c, N_CLASSES, layers).to(device).train()
    w_optim, a_optim = tr.make_optimizers(model)
    g = torch.Generator().manual_seed(0)
    xt, xv = (torch.randn(batch, channels, size, size, generator=g).to(device) for _ in range(2))
    yt, yv = (torch.randint(0, N_CLASSES, (batch,), generator=g).to(device) for _ in range(2))
    step = lambda: tr.search_step(model, w_optim, a_optim, xt, yt, xv, yv, 0.025, args.order)
    return step, 2 * batch


def _final(network, args, device):
    c, layers, batch, size, channels = network
    model = tr.AugmentCNN(size, channels, c, N_CLASSES, layers, True, DARTS_V2).to(device).train()
    model.drop_path_prob(0.1)
    optim = torch.optim.SGD(model.parameters(), 0.025, momentum=0.9, weight_decay=3e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=g).to(device)
    y = torch.randint(0, N_CLASSES, (batch,), generator=g).to(device)

    def step():
        optim.zero_grad()
        logits, aux = model(x)
        loss = F.cross_entropy(logits, y) + 0.4 * F.cross_entropy(aux, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optim.step()
        return loss.detach()

    return step, batch


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--net", choices=("search", "final"), default="search")
    configs = sorted(set(bench.SEARCH_CONFIGS) | set(bench.FINAL_CONFIGS))
    p.add_argument("--config", choices=configs, default="test")
    p.add_argument("--order", choices=("first", "second", "fd"), default="first")
    for name, what in bench.SIZE_FLAGS.items():
        p.add_argument(f"--{name}", type=int, default=0, help=f"{what} (0: the config's)")
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args(argv)
    sizes = {name: getattr(args, name) for name in bench.SIZE_FLAGS}
    try:
        network = bench.network_shape(args.net, args.config, **sizes)
    except ValueError as e:
        p.error(str(e))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True  # as pt.darts sets it
    torch.manual_seed(0)

    t = time.perf_counter()
    step, images = (_search if args.net == "search" else _final)(network, args, device)
    step()
    _sync(device)
    warmup_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    _sync(device)
    step_s = (time.perf_counter() - t) / max(args.steps, 1)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 1e9
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux
    out = {
        "framework": "torch",
        "net": args.net,
        "config": args.config,
        "order": args.order if args.net == "search" else None,
        "C": network[0],
        "layers": network[1],
        "batch": network[2],
        "size": network[3],
        "device": f"cuda {torch.cuda.get_device_name()}" if device.type == "cuda" else "cpu",
        "warmup_s": round(warmup_s, 4),
        "step_s": round(step_s, 4),
        "images_per_s": round(images / step_s, 2),
        "peak_mem_gb": round(peak, 3),
        "loss": round(float(loss), 4) if args.steps else None,
        "torch": torch.__version__,
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
