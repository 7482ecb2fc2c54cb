"""Numerical parity of darts_jax with the PyTorch reference (pt.darts semantics).

    python -m darts_jax.interop.parity --config tiny --order 2 [--dtype float32]

Builds the PyTorch reference networks (``interop.torch_ref``) from one seed,
copies their weights, alphas and BN statistics into darts_jax with
``interop.convert``, runs the same computations on both sides and prints,
per quantity, the largest absolute difference, the largest reference
magnitude and their ratio (``rel = max|ours - torch| / max|torch|``):

- search network (``n_nodes``, 2 in ``tiny``: second-order programs compile
  slowly): train-mode logits, loss, BN running statistics after that
  forward, eval-mode logits, weight gradients by parameter group, alpha
  gradients (first order; with ``--order 2`` exact second order through a
  virtual step with a nonzero momentum buffer, and the corrected central
  finite difference, both composed as the search step's passes compose
  them), the SGD weight optimizer alone with gradient clipping
  active, one complete search step (alpha Adam step, clipped SGD weight
  step; ``--step-order``, default ``--order``) from identical states:
  weights, alphas, BN running statistics, momentum buffers, loss;
- search network at ``mapping_nodes`` (4): eval-mode logits, which use every
  edge of every (M targets, S sources) grid of the converter;
- final network (with aux head, drop path off): eval-mode logits, training
  loss CE + 0.4 CE_aux, logits, BN statistics, weight gradients by group.

Rows marked ``clipped`` depend on gradient clipping being active. Exit
status 1 if a float64 row's rel exceeds 1e-10 (float32 rows are only
reported; a non-finite one fails).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import re
import sys
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F

from darts_jax import architect, optim
from darts_jax import genotypes as gt
from darts_jax.interop import convert
from darts_jax.interop import torch_ref as tr
from darts_jax.metrics import cross_entropy
from darts_jax.search_model import reduction_indices
from darts_jax.search_step import Hyper, SearchState, make_loss_fn, make_train_step

TOL_F64 = 1e-10


@dataclasses.dataclass(frozen=True)
class Config:
    C: int = 4
    layers: int = 3
    n_nodes: int = 2  # gradient checks (compile time grows fast with nodes)
    mapping_nodes: int = 4  # forward-only checks of the edge mapping (0: skip)
    num_classes: int = 10
    size: int = 16  # search input size (4x4 maps after two reductions)
    batch: int = 2
    final_C: int = 4
    final_layers: int = 3
    final_size: int = 32  # the aux head needs >= 6x6 features after two reductions
    genotype: str = "MNIST"  # uses all seven non-zero ops
    lr: float = 0.1  # weight lr = xi of the virtual step
    momentum_scale: float = 0.1  # the preset momentum buffer, times N(0, 1)
    alpha_scale: float = 0.5  # alphas ~ N(0, alpha_scale^2): away from uniform
    aux_weight: float = 0.4
    grad_clip: float = 5.0  # pt.darts's; the tiny step's gradient norm exceeds it
    clip_test_norm: float = 50.0  # gradient norm of the optimizer-only clipping check
    seed: int = 0


CONFIGS = {"tiny": Config()}


@dataclasses.dataclass(frozen=True)
class Row:
    section: str
    name: str
    max_abs: float
    scale: float  # max |reference|
    clipped: bool = False  # depends on gradient clipping being active

    @property
    def rel(self) -> float:
        return self.max_abs / self.scale if self.scale > 0 else self.max_abs


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def compare(section: str, name: str, ours, ref, clipped: bool = False) -> Row:
    """Max abs difference over all entries (dicts: matched by key) and max |ref|."""
    if isinstance(ref, Mapping):
        if set(ours) != set(ref):
            raise ValueError(f"{name}: key sets differ: {sorted(set(ours) ^ set(ref))[:5]}")
        pairs = [(_np(ours[k]), _np(ref[k])) for k in ref]
    else:
        pairs = [(_np(ours), _np(ref))]
    max_abs = scale = 0.0
    for a, b in pairs:
        if a.shape != b.shape:
            raise ValueError(f"{name}: shapes differ: {a.shape} vs {b.shape}")
        if a.size:
            diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
            max_abs = max(max_abs, float(diff.max()) if np.isfinite(diff).all() else np.inf)
            scale = max(scale, float(np.abs(b).max()))
    return Row(section, name, max_abs, scale, clipped)


def _grouped(section, what, ours: Mapping, ref: Mapping, group_of) -> list[Row]:
    groups: dict[str, list[str]] = {}
    for k in ref:
        groups.setdefault(group_of(k), []).append(k)
    return [
        compare(section, f"{what} [{g}]", {k: ours[k] for k in ks}, {k: ref[k] for k in ks})
        for g, ks in groups.items()
    ]


def _search_group(key: str) -> str:
    if ".stem." in key:
        return "stem"
    if ".preproc" in key:
        return "preproc"
    m = re.search(r"\._ops\.(\d+)\.", key)
    if m:
        return gt.PRIMITIVES[int(m.group(1))] + (" (FactorizedReduce)" if "conv" in key else "")
    return "classifier" if ".linear." in key else "other"


def _final_group(genotype, layers):
    def group(key: str) -> str:
        if key.startswith("stem."):
            return "stem"
        if key.startswith("aux_head."):
            return "aux_head"
        if key.startswith("linear."):
            return "classifier"
        if ".preproc" in key:
            return "preproc"
        m = re.match(r"cells\.(\d+)\.dag\.(\d+)\.(\d+)\.", key)
        if m:
            c, i, e = map(int, m.groups())
            nodes = genotype.reduce if c in reduction_indices(layers) else genotype.normal
            return nodes[i][e][0]
        return "other"

    return group


def _bn_buffers(model: torch.nn.Module) -> dict:
    return {
        k: v for k, v in model.state_dict().items() if k.endswith(("running_mean", "running_var"))
    }


def _nchw_to_nhwc(x: torch.Tensor) -> jax.Array:
    return jnp.asarray(_np(x.permute(0, 2, 3, 1)))


def _search_net(cfg: Config, n_nodes: int, tdtype, g: torch.Generator):
    """A reference supernet with alphas away from uniform and nontrivial BN statistics."""
    net = tr.SearchCNNController(3, cfg.C, cfg.num_classes, cfg.layers, n_nodes).to(tdtype).train()
    with torch.no_grad():
        for a in net.alphas():
            a.copy_(cfg.alpha_scale * torch.randn(a.shape, generator=g, dtype=tdtype))
        for _ in range(2):
            net(torch.randn(cfg.batch, 3, cfg.size, cfg.size, generator=g, dtype=tdtype))
    return net


def _batch(cfg: Config, size: int, tdtype, g: torch.Generator):
    x = torch.randn(cfg.batch, 3, size, size, generator=g, dtype=tdtype)
    return x, torch.randint(0, cfg.num_classes, (cfg.batch,), generator=g)


def _mapping_rows(cfg: Config, tdtype, rows: list[Row]) -> None:
    """Eval-mode forward at mapping_nodes: imports every edge of the (M, S) grids,
    M > 1 included (the gradient checks run at n_nodes, where M may stay 1)."""
    n = cfg.mapping_nodes
    torch.manual_seed(cfg.seed + 20)
    g = torch.Generator().manual_seed(cfg.seed + 21)
    net = _search_net(cfg, n, tdtype, g)
    x, _ = _batch(cfg, cfg.size, tdtype, g)
    model, variables, alphas = convert.from_torch(net.state_dict(), "ptdarts_search")
    logits = jax.jit(lambda v, x, a: model.apply(v, x, a, train=False))(
        variables, _nchw_to_nhwc(x), alphas
    )
    rows.append(compare(f"search, {n} nodes", "logits (eval-mode BN)", logits, net.eval()(x)))


def _search_rows(
    cfg: Config, order: int, step_order: int, tdtype, rows: list[Row], info: dict
) -> None:
    S = "search"
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    net = _search_net(cfg, cfg.n_nodes, tdtype, g)
    (xt, yt), (xv, yv) = _batch(cfg, cfg.size, tdtype, g), _batch(cfg, cfg.size, tdtype, g)
    bufs = {
        n: cfg.momentum_scale * torch.randn(p.shape, generator=g, dtype=tdtype)
        for n, p in net.named_weights()
    }

    layout = "ptdarts_search"
    model, variables, alphas = convert.from_torch(net.state_dict(), layout)
    params, stats = variables["params"], variables["batch_stats"]
    jt = (_nchw_to_nhwc(xt), jnp.asarray(_np(yt)))
    jv = (_nchw_to_nhwc(xv), jnp.asarray(_np(yv)))
    dtype = jt[0].dtype

    def names(tree, collection):  # a darts_jax tree as PyTorch-named arrays
        return convert.tree_to_arrays({collection: tree}, layout, model)

    loss_fn = make_loss_fn(model)
    grad_fn = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True))

    # forward, loss, BN statistics, weight gradients (train batch)
    (loss, (logits, new_stats)), (gw, _) = grad_fn(params, alphas, stats, *jt)
    ref = copy.deepcopy(net).train()
    t_logits = ref(xt)
    t_loss = F.cross_entropy(t_logits, yt)
    weights = dict(ref.named_weights())
    t_gw = dict(zip(weights, torch.autograd.grad(t_loss, list(weights.values())), strict=True))
    rows.append(compare(S, "logits (train-mode BN)", logits, t_logits))
    rows.append(compare(S, "loss", loss, t_loss))
    rows.append(
        compare(S, "BN running stats after it", names(new_stats, "batch_stats"), _bn_buffers(ref))
    )
    eval_logits = jax.jit(lambda v, x, a: model.apply(v, x, a, train=False))(
        variables, jv[0], alphas
    )
    rows.append(compare(S, "logits (eval-mode BN)", eval_logits, net.eval()(xv)))
    net.train()
    rows += _grouped(S, "weight grad", names(gw, "params"), t_gw, _search_group)

    # alpha gradients
    alpha_names = [n for n, _ in net.named_alphas()]

    def alpha_row(name, ours, theirs):
        rows.append(
            compare(S, name, names(ours, "alphas"), dict(zip(alpha_names, theirs, strict=True)))
        )

    _, (_, ga_first) = grad_fn(params, alphas, stats, *jv)
    t_first = tr.alpha_grad_first(net, xv, yv)
    alpha_row("alpha grad, first order", ga_first, t_first)
    j_bufs = convert.arrays_to_tree(bufs, layout, model)["params"]
    virtual = architect.VirtualStep(
        xi=jnp.asarray(cfg.lr, dtype), momentum_buffer=j_bufs, momentum=0.9, weight_decay=3e-4
    )
    if order == 2:
        # Both second-order gradients as the search step takes them (``search_passes``):
        # the passes are the gradient program above at other weights and batches,
        # followed by the same ``architect`` arithmetic. Reusing that one compiled
        # program leaves the Hessian-vector product the only new compile.
        # (``tests/test_architect.py`` checks this split form against ``architect.exact``.)
        w_virtual = jax.jit(architect.virtual_weights)(params, gw, virtual)
        _, (v_w, d_alpha) = grad_fn(w_virtual, alphas, stats, *jv)
        hvp = jax.jit(lambda p, a, s, t, v: architect.alpha_hvp(loss_fn, p, a, s, t, v))(
            params, alphas, stats, jt, v_w
        )
        exact = jax.jit(architect.second_order_combine)(d_alpha, hvp, virtual.xi)
        t_exact = tr.alpha_grad_exact(net, xt, yt, xv, yv, cfg.lr, bufs, 0.9, 3e-4)
        alpha_row("alpha grad, second order (exact)", exact, t_exact)
        eps = jax.jit(architect.fd_epsilon)(v_w)
        shifted = jax.jit(architect.shifted_weights)
        g_plus, g_minus = (
            grad_fn(shifted(params, v_w, sign * eps), alphas, stats, *jt)[1][1] for sign in (1, -1)
        )
        fd = jax.jit(architect.fd_combine)(d_alpha, g_plus, g_minus, virtual.xi, eps)
        t_fd = tr.alpha_grad_fd(net, xt, yt, xv, yv, cfg.lr, bufs, 0.9, 3e-4)
        alpha_row("alpha grad, second order (fd, corrected)", fd, t_fd)
        flat = lambda ts: np.concatenate([_np(t).ravel() for t in ts])  # noqa: E731
        info["|exact - first| / |first| (alpha grad, torch)"] = float(
            np.linalg.norm(flat(t_exact) - flat(t_first)) / np.linalg.norm(flat(t_first))
        )

    # the weight optimizer alone, with clipping active
    schedule = lambda count: jnp.asarray(cfg.lr, dtype)  # noqa: E731
    w_tx = optim.weight_optimizer(schedule, 0.9, 3e-4, cfg.grad_clip)
    w_state = optax.tree_utils.tree_set(w_tx.init(params), trace=j_bufs)
    clip_net = copy.deepcopy(net)
    t_grads = {
        n: torch.randn(p.shape, generator=g, dtype=tdtype) for n, p in clip_net.named_weights()
    }
    norm = torch.cat([t.ravel() for t in t_grads.values()]).norm()
    t_grads = {n: t * (cfg.clip_test_norm / norm) for n, t in t_grads.items()}
    j_grads = convert.arrays_to_tree(t_grads, layout, model)["params"]

    @jax.jit
    def sgd(params, grads, state):
        updates, state = w_tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    clip_params, clip_state = sgd(params, j_grads, w_state)
    w_optim, _ = tr.make_optimizers(clip_net, w_lr=cfg.lr)
    for n, p in clip_net.named_weights():
        w_optim.state[p]["momentum_buffer"] = bufs[n].clone()
        p.grad = t_grads[n].clone()
    torch.nn.utils.clip_grad_norm_(list(clip_net.weights()), cfg.grad_clip)
    w_optim.step()
    c = f"SGD step, clip active (|g| = {cfg.clip_test_norm:g} > {cfg.grad_clip:g})"
    rows.append(
        compare(
            S, f"{c}: weights", names(clip_params, "params"), dict(clip_net.named_weights()), True
        )
    )
    rows.append(
        compare(
            S,
            f"{c}: momentum",
            names(optim.momentum_buffer(clip_state), "params"),
            tr.momentum_buffers(clip_net, w_optim),
            True,
        )
    )

    # one complete search step from identical states
    mode = "second" if step_order == 2 else "first"
    a_tx = optim.alpha_optimizer(3e-4, 1e-3)
    state = SearchState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=stats,
        alphas=alphas,
        w_opt_state=w_state,
        a_opt_state=a_tx.init(alphas),
        rng=jax.random.PRNGKey(0),
    )
    step = jax.jit(make_train_step(model, w_tx, a_tx, schedule, lambda k, x: x, Hyper(mode)))
    batch_j = {
        "train_images": jt[0],
        "train_labels": jt[1],
        "val_images": jv[0],
        "val_labels": jv[1],
    }
    new, metrics = step(state, batch_j)
    w_optim, a_optim = tr.make_optimizers(net, w_lr=cfg.lr)
    for n, p in net.named_weights():
        w_optim.state[p]["momentum_buffer"] = bufs[n].clone()
    t_loss = tr.search_step(
        net, w_optim, a_optim, xt, yt, xv, yv, cfg.lr, mode, grad_clip=cfg.grad_clip
    )
    grad_norm = float(metrics["w_grad_norm"])
    info[f"search step weight-gradient norm (clip {cfg.grad_clip:g})"] = grad_norm
    clipped = grad_norm > cfg.grad_clip
    p = f"step ({mode} order)"
    rows.append(compare(S, f"{p}: loss", metrics["loss"], t_loss))
    rows.append(compare(S, f"{p}: alphas", names(new.alphas, "alphas"), dict(net.named_alphas())))
    rows.append(
        compare(S, f"{p}: weights", names(new.params, "params"), dict(net.named_weights()), clipped)
    )
    rows.append(
        compare(
            S,
            f"{p}: momentum buffers",
            names(optim.momentum_buffer(new.w_opt_state), "params"),
            tr.momentum_buffers(net, w_optim),
            clipped,
        )
    )
    rows.append(
        compare(
            S, f"{p}: BN running stats", names(new.batch_stats, "batch_stats"), _bn_buffers(net)
        )
    )


def _final_rows(cfg: Config, tdtype, rows: list[Row]) -> None:
    S = "final"
    genotype = gt.resolve(cfg.genotype)
    torch.manual_seed(cfg.seed + 10)
    g = torch.Generator().manual_seed(cfg.seed + 11)
    size = cfg.final_size
    net = tr.AugmentCNN(size, 3, cfg.final_C, cfg.num_classes, cfg.final_layers, True, genotype)
    net = net.to(tdtype).train()
    net.drop_path_prob(0.0)
    with torch.no_grad():
        for _ in range(2):
            net(torch.randn(cfg.batch, 3, size, size, generator=g, dtype=tdtype))
    x, y = _batch(cfg, size, tdtype, g)
    layout = "ptdarts_final"
    model, variables, _ = convert.from_torch(net.state_dict(), layout, genotype=genotype)
    xj, yj = _nchw_to_nhwc(x), jnp.asarray(_np(y))

    def names(tree, collection):
        return convert.tree_to_arrays({collection: tree}, layout, model)

    eval_logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, xj)
    rows.append(compare(S, "logits (eval-mode BN)", eval_logits, net.eval()(x)[0]))
    net.train()

    def loss_fn(params, stats, x, y):
        (logits, aux), mutated = model.apply(
            {"params": params, "batch_stats": stats},
            x,
            train=True,
            drop_prob=0.0,
            mutable=["batch_stats"],
            rngs={"drop_path": jax.random.PRNGKey(0)},
        )
        loss = cross_entropy(logits, y) + cfg.aux_weight * cross_entropy(aux, y)
        return loss, (logits, aux, mutated["batch_stats"])

    (loss, (logits, aux, new_stats)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        variables["params"], variables["batch_stats"], xj, yj
    )
    t_logits, t_aux = net(x)
    t_loss = F.cross_entropy(t_logits, y) + cfg.aux_weight * F.cross_entropy(t_aux, y)
    named = dict(net.named_parameters())
    t_grads = dict(zip(named, torch.autograd.grad(t_loss, list(named.values())), strict=True))
    rows.append(compare(S, "logits (train-mode BN)", logits, t_logits))
    rows.append(compare(S, "aux logits (train-mode BN)", aux, t_aux))
    rows.append(compare(S, f"train loss (CE + {cfg.aux_weight:g} CE_aux)", loss, t_loss))
    rows.append(
        compare(S, "BN running stats after it", names(new_stats, "batch_stats"), _bn_buffers(net))
    )
    rows += _grouped(
        S, "weight grad", names(grads, "params"), t_grads, _final_group(genotype, cfg.final_layers)
    )


def run(
    config: str | Config = "tiny",
    order: int = 2,
    dtype: str = "float64",
    step_order: int | None = None,
) -> tuple[list[Row], dict]:
    """Runs every comparison; returns the rows and a few informative numbers.

    ``order`` 2 adds the exact and finite-difference second-order alpha
    gradients; ``step_order`` (default: ``order``) is the alpha gradient of
    the complete search step.
    """
    cfg = CONFIGS[config] if isinstance(config, str) else config
    step_order = order if step_order is None else step_order
    if order not in (1, 2) or step_order not in (1, 2):
        raise ValueError(f"order and step_order must be 1 or 2, got {order}, {step_order}")
    tdtype = {"float64": torch.float64, "float32": torch.float32}[dtype]
    rows: list[Row] = []
    info: dict = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead
    try:
        with jax.enable_x64(dtype == "float64"):
            _search_rows(cfg, order, step_order, tdtype, rows, info)
            if cfg.mapping_nodes:
                _mapping_rows(cfg, tdtype, rows)
            _final_rows(cfg, tdtype, rows)
    finally:
        torch.set_num_threads(threads)
    return rows, info


def failures(rows: list[Row], dtype: str) -> list[Row]:
    if dtype == "float64":
        return [r for r in rows if not r.rel <= TOL_F64]
    return [r for r in rows if not np.isfinite(r.max_abs)]


def format_table(rows: list[Row], dtype: str) -> str:
    width = max(len(f"{r.section}: {r.name}") for r in rows)
    bad = set(map(id, failures(rows, dtype)))
    lines = [f"{'quantity':<{width}}  {'max abs diff':>12}  {'max |torch|':>11}  {'rel diff':>9}"]
    lines.append("-" * len(lines[0]))
    for r in rows:
        flag = "  FAIL" if id(r) in bad else ""
        lines.append(
            f"{r.section + ': ' + r.name:<{width}}  {r.max_abs:12.3e}  {r.scale:11.3e}  {r.rel:9.2e}{flag}"
        )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m darts_jax.interop.parity",
        description="Compare darts_jax with the PyTorch reference (pt.darts) quantity by quantity.",
    )
    parser.add_argument("--config", default="tiny", choices=sorted(CONFIGS))
    parser.add_argument(
        "--order",
        type=int,
        default=2,
        choices=(1, 2),
        help="1: first-order alpha gradient and step; 2: also exact and fd second order (default)",
    )
    parser.add_argument(
        "--step-order",
        type=int,
        choices=(1, 2),
        help="alpha gradient order of the complete search step (default: --order)",
    )
    parser.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    return parser


@dataclasses.dataclass
class Report:
    exit_code: int
    rows: list[Row]
    info: dict
    text: str


def evaluate(argv: list[str] | None = None) -> Report:
    """What ``main`` does, returned instead of printed (for tests)."""
    args = _parser().parse_args(argv)
    rows, info = run(args.config, args.order, args.dtype, args.step_order)
    lines = [
        f"parity darts_jax vs PyTorch reference: config {args.config} "
        f"{CONFIGS[args.config]}, order {args.order}, "
        f"step order {args.step_order or args.order}, {args.dtype}",
        # The backend matters: e.g. JAX's float64 max-pool second derivative on
        # GPUs needed its own rule (ops.max_pool_3x3).
        f"  JAX on {jax.default_backend()} ({jax.devices()[0].device_kind}), PyTorch on the CPU",
    ]
    lines += [f"  {k}: {v:.4g}" for k, v in info.items()]
    lines.append(format_table(rows, args.dtype))
    bad = failures(rows, args.dtype)
    if args.dtype == "float32":
        lines.append("float32: reported only (only non-finite rows fail)")
    elif bad:
        lines.append(f"{len(bad)} of {len(rows)} rows exceed rel {TOL_F64:g}")
    else:
        lines.append(f"all {len(rows)} rows within rel {TOL_F64:g}")
    return Report(1 if bad else 0, rows, info, "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    report = evaluate(argv)
    print(report.text)
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
