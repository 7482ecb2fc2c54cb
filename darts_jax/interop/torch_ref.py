"""PyTorch reference of the pt.darts networks and search step, for parity tests and timing.

Written from the facts in SPEC.md (no pt.darts code): the modules are laid out
so that ``state_dict()`` names, shapes and order equal pt.darts's
(``reference/ptdarts_*.tsv``), hence pt.darts checkpoints load into them.

- Ops (NCHW, bias-free convs, BN momentum 0.1): StdConv, DilConv, SepConv,
  FactorizedReduce, PoolBN, Identity, Zero, MixedOp (PRIMITIVES order).
- ``SearchCNNController``: alphas + search network (BN affine only in the stem).
- ``AugmentCNN``: final network (affine BN, drop path, auxiliary head).
- Architect: ``virtual_step``, ``alpha_grad_first``, ``alpha_grad_exact``
  (double backward through the virtual step) and ``alpha_grad_fd`` (central
  finite difference with pt.darts's precedence bug corrected). They run the
  network through ``torch.func.functional_call`` on copies of the BN buffers,
  so BN running statistics are never changed by an alpha gradient.
- ``search_step``: one alpha Adam step then one clipped SGD weight step.

Everything works in float64 (``model.double()``) and on CUDA.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from darts_jax.genotypes import PRIMITIVES

# ---------------------------------------------------------------------------
# Ops


def _bn(C: int, affine: bool) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(C, affine=affine, momentum=0.1)


class StdConv(nn.Module):
    """ReLU, conv k x k, BN."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__()
        self.net = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(C_in, C_out, kernel_size, stride, padding, bias=False),
            _bn(C_out, affine),
        )

    def forward(self, x):
        return self.net(x)


class DilConv(nn.Module):
    """ReLU, depthwise (dilated) conv, pointwise conv, BN."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, affine=True):
        super().__init__()
        self.net = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(C_in, C_in, kernel_size, stride, padding, dilation, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            _bn(C_out, affine),
        )

    def forward(self, x):
        return self.net(x)


class SepConv(nn.Module):
    """Two DilConvs (dilation 1); only the first is strided."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__()
        self.net = nn.Sequential(
            DilConv(C_in, C_in, kernel_size, stride, padding, 1, affine),
            DilConv(C_in, C_out, kernel_size, 1, padding, 1, affine),
        )

    def forward(self, x):
        return self.net(x)


class FactorizedReduce(nn.Module):
    """ReLU, two 1x1 stride-2 convs (the second on x shifted by one pixel), concat, BN."""

    def __init__(self, C_in, C_out, affine=True):
        super().__init__()
        assert C_out % 2 == 0, C_out
        self.conv1 = nn.Conv2d(C_in, C_out // 2, 1, 2, 0, bias=False)
        self.conv2 = nn.Conv2d(C_in, C_out // 2, 1, 2, 0, bias=False)
        self.bn = _bn(C_out, affine)

    def forward(self, x):
        x = F.relu(x)
        return self.bn(torch.cat([self.conv1(x), self.conv2(x[:, :, 1:, 1:])], dim=1))


class PoolBN(nn.Module):
    """Max or average pool (padding excluded from the mean), then BN."""

    def __init__(self, pool_type, C, kernel_size, stride, padding, affine=True):
        super().__init__()
        if pool_type == "max":
            self.pool = nn.MaxPool2d(kernel_size, stride, padding)
        elif pool_type == "avg":
            self.pool = nn.AvgPool2d(kernel_size, stride, padding, count_include_pad=False)
        else:
            raise ValueError(f"unknown pool type {pool_type!r}")
        self.bn = _bn(C, affine)

    def forward(self, x):
        return self.bn(self.pool(x))


class Identity(nn.Module):
    def forward(self, x):
        return x


class Zero(nn.Module):
    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        if self.stride == 1:
            return x * 0.0
        return x[:, :, :: self.stride, :: self.stride] * 0.0


OPS = {
    "none": lambda C, stride, affine: Zero(stride),
    "avg_pool_3x3": lambda C, stride, affine: PoolBN("avg", C, 3, stride, 1, affine),
    "max_pool_3x3": lambda C, stride, affine: PoolBN("max", C, 3, stride, 1, affine),
    "skip_connect": lambda C, stride, affine: (
        Identity() if stride == 1 else FactorizedReduce(C, C, affine)
    ),
    "sep_conv_3x3": lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine),
    "sep_conv_5x5": lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine),
    "dil_conv_3x3": lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine),
    "dil_conv_5x5": lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine),
}


class MixedOp(nn.Module):
    """sum_j w_j * op_j(x) over all PRIMITIVES (``none`` included)."""

    def __init__(self, C, stride):
        super().__init__()
        self._ops = nn.ModuleList(OPS[name](C, stride, False) for name in PRIMITIVES)

    def forward(self, x, weights):
        return sum(w * op(x) for w, op in zip(weights, self._ops, strict=True))


class DropPath(nn.Module):
    """Per-sample Bernoulli mask divided by the keep probability (training, p > 0 only)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p <= 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.empty(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x / keep * mask


# ---------------------------------------------------------------------------
# Search network


def _preproc0(C_pp, C, reduction_p, affine):
    if reduction_p:
        return FactorizedReduce(C_pp, C, affine)
    return StdConv(C_pp, C, 1, 1, 0, affine)


class SearchCell(nn.Module):
    def __init__(self, n_nodes, C_pp, C_p, C, reduction_p, reduction):
        super().__init__()
        self.reduction = reduction
        self.n_nodes = n_nodes
        self.preproc0 = _preproc0(C_pp, C, reduction_p, affine=False)
        self.preproc1 = StdConv(C_p, C, 1, 1, 0, affine=False)
        self.dag = nn.ModuleList()
        for i in range(n_nodes):
            self.dag.append(
                nn.ModuleList(MixedOp(C, 2 if reduction and j < 2 else 1) for j in range(i + 2))
            )

    def forward(self, s0, s1, w_dag):
        states = [self.preproc0(s0), self.preproc1(s1)]
        for edges, w_list in zip(self.dag, w_dag, strict=True):
            states.append(sum(e(s, w) for e, s, w in zip(edges, states, w_list, strict=True)))
        return torch.cat(states[2:], dim=1)


class SearchCNN(nn.Module):
    def __init__(self, C_in, C, n_classes, n_layers, n_nodes=4, stem_multiplier=3):
        super().__init__()
        C_cur = stem_multiplier * C
        self.stem = nn.Sequential(
            nn.Conv2d(C_in, C_cur, 3, 1, 1, bias=False), _bn(C_cur, affine=True)
        )
        C_pp, C_p, C_cur = C_cur, C_cur, C
        self.cells = nn.ModuleList()
        reduction_p = False
        for i in range(n_layers):
            reduction = i in (n_layers // 3, 2 * n_layers // 3)
            if reduction:
                C_cur *= 2
            self.cells.append(SearchCell(n_nodes, C_pp, C_p, C_cur, reduction_p, reduction))
            reduction_p = reduction
            C_pp, C_p = C_p, C_cur * n_nodes
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(C_p, n_classes)

    def forward(self, x, weights_normal, weights_reduce):
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            w = weights_reduce if cell.reduction else weights_normal
            s0, s1 = s1, cell(s0, s1, w)
        return self.linear(self.gap(s1).flatten(1))


class SearchCNNController(nn.Module):
    """Alphas (per node, (i+2, 8), 1e-3 * randn) and the search network under ``net``."""

    def __init__(self, C_in, C, n_classes, n_layers, n_nodes=4, stem_multiplier=3):
        super().__init__()
        n_ops = len(PRIMITIVES)
        self.alpha_normal = nn.ParameterList(
            nn.Parameter(1e-3 * torch.randn(i + 2, n_ops)) for i in range(n_nodes)
        )
        self.alpha_reduce = nn.ParameterList(
            nn.Parameter(1e-3 * torch.randn(i + 2, n_ops)) for i in range(n_nodes)
        )
        self.net = SearchCNN(C_in, C, n_classes, n_layers, n_nodes, stem_multiplier)

    def forward(self, x):
        wn = [F.softmax(a, dim=-1) for a in self.alpha_normal]
        wr = [F.softmax(a, dim=-1) for a in self.alpha_reduce]
        return self.net(x, wn, wr)

    def loss(self, x, y):
        return F.cross_entropy(self(x), y)

    def named_weights(self):
        return self.net.named_parameters(prefix="net")

    def weights(self):
        return self.net.parameters()

    def named_alphas(self):
        for name, p in self.named_parameters():
            if name.startswith("alpha_"):
                yield name, p

    def alphas(self):
        for _, p in self.named_alphas():
            yield p


# ---------------------------------------------------------------------------
# Final (augment) network


class AugmentCell(nn.Module):
    def __init__(self, genotype, C_pp, C_p, C, reduction_p, reduction):
        super().__init__()
        self.reduction = reduction
        self.preproc0 = _preproc0(C_pp, C, reduction_p, affine=True)
        self.preproc1 = StdConv(C_p, C, 1, 1, 0, affine=True)
        gene = genotype.reduce if reduction else genotype.normal
        self.concat = list(genotype.reduce_concat if reduction else genotype.normal_concat)
        self.dag = nn.ModuleList()
        self.inputs: list[list[int]] = []
        for edges in gene:
            row = nn.ModuleList()
            for name, s_idx in edges:
                op = OPS[name](C, 2 if reduction and s_idx < 2 else 1, True)
                if not isinstance(op, Identity):
                    op = nn.Sequential(op, DropPath())
                row.append(op)
            self.dag.append(row)
            self.inputs.append([s_idx for _, s_idx in edges])

    def forward(self, s0, s1):
        states = [self.preproc0(s0), self.preproc1(s1)]
        for row, idx in zip(self.dag, self.inputs, strict=True):
            states.append(sum(op(states[i]) for op, i in zip(row, idx, strict=True)))
        return torch.cat([states[i] for i in self.concat], dim=1)


class AuxiliaryHead(nn.Module):
    """Head on the 8x8 (input_size // 4) map after the second reduction cell."""

    def __init__(self, fmap_size, C, n_classes):
        super().__init__()
        self.net = nn.Sequential(
            nn.ReLU(),
            nn.AvgPool2d(5, stride=fmap_size - 5, padding=0, count_include_pad=False),
            nn.Conv2d(C, 128, 1, bias=False),
            _bn(128, True),
            nn.ReLU(),
            nn.Conv2d(128, 768, 2, bias=False),
            _bn(768, True),
            nn.ReLU(),
        )
        self.linear = nn.Linear(768, n_classes)

    def forward(self, x):
        return self.linear(self.net(x).flatten(1))


class AugmentCNN(nn.Module):
    """Final network. forward returns (logits, aux_logits); aux_logits is None unless
    training with ``auxiliary`` (pt.darts returns the same pair)."""

    def __init__(
        self, input_size, C_in, C, n_classes, n_layers, auxiliary, genotype, stem_multiplier=3
    ):
        super().__init__()
        self.aux_pos = 2 * n_layers // 3 if auxiliary else -1
        C_cur = stem_multiplier * C
        self.stem = nn.Sequential(
            nn.Conv2d(C_in, C_cur, 3, 1, 1, bias=False), _bn(C_cur, affine=True)
        )
        C_pp, C_p, C_cur = C_cur, C_cur, C
        self.cells = nn.ModuleList()
        reduction_p = False
        for i in range(n_layers):
            reduction = i in (n_layers // 3, 2 * n_layers // 3)
            if reduction:
                C_cur *= 2
            cell = AugmentCell(genotype, C_pp, C_p, C_cur, reduction_p, reduction)
            self.cells.append(cell)
            reduction_p = reduction
            C_pp, C_p = C_p, C_cur * len(cell.concat)
            if i == self.aux_pos:
                self.aux_head = AuxiliaryHead(input_size // 4, C_p, n_classes)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(C_p, n_classes)

    def drop_path_prob(self, p: float) -> None:
        for m in self.modules():
            if isinstance(m, DropPath):
                m.p = p

    def forward(self, x):
        s0 = s1 = self.stem(x)
        aux_logits = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1)
            if i == self.aux_pos and self.training:
                aux_logits = self.aux_head(s1)
        return self.linear(self.gap(s1).flatten(1)), aux_logits


# ---------------------------------------------------------------------------
# Architect (alpha gradients) and the search step

Buffers = Mapping[str, torch.Tensor] | None


def momentum_buffers(model: SearchCNNController, w_optim: torch.optim.Optimizer) -> dict:
    """{weight name: SGD momentum buffer} for the weights that have one (none before step 1)."""
    out = {}
    for name, p in model.named_weights():
        buf = w_optim.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            out[name] = buf
    return out


def _loss(model, params: Mapping[str, torch.Tensor], x, y):
    """CE loss of ``model`` under ``params``, on copies of its buffers (BN stats discarded)."""
    bufs = {n: b.clone() for n, b in model.named_buffers()}
    return F.cross_entropy(functional_call(model, {**params, **bufs}, (x,)), y)


def _grads(out, inputs, create_graph=False):
    gs = torch.autograd.grad(out, inputs, create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(i) if g is None else g for i, g in zip(inputs, gs, strict=True)]


def virtual_step(
    model,
    x_train,
    y_train,
    xi,
    w_momentum_buffers: Buffers,
    w_momentum,
    w_weight_decay,
    create_graph=False,
) -> dict:
    """w' = w - xi * (mu * v + grad_w L_train(w, alpha) + wd * w), as {name: tensor}.

    ``w_momentum_buffers`` maps weight names (``net.…``) to momentum buffers; a
    missing name (or None) means v = 0. With ``create_graph`` w' stays a
    differentiable function of the alphas (for the exact second-order gradient).
    """
    bufs = w_momentum_buffers or {}
    weights = dict(model.named_weights())
    alphas = dict(model.named_alphas())
    loss = _loss(model, {**weights, **alphas}, x_train, y_train)
    gw = _grads(loss, list(weights.values()), create_graph=create_graph)
    out = {}
    for (name, w), g in zip(weights.items(), gw, strict=True):
        v = bufs.get(name)
        m = 0.0 if v is None else w_momentum * v
        w0 = w if create_graph else w.detach()
        out[name] = w0 - xi * (m + g + w_weight_decay * w0)
    return out


def alpha_grad_first(model, xv, yv) -> list[torch.Tensor]:
    """grad_alpha L_val(w, alpha), in ``model.alphas()`` order."""
    alphas = dict(model.named_alphas())
    params = {**dict(model.named_weights()), **alphas}
    return _grads(_loss(model, params, xv, yv), list(alphas.values()))


def alpha_grad_exact(model, xt, yt, xv, yv, xi, buffers: Buffers, mu, wd) -> list[torch.Tensor]:
    """grad_alpha L_val(w'(alpha), alpha) exactly, by double backward through the virtual step."""
    alphas = dict(model.named_alphas())
    w1 = virtual_step(model, xt, yt, xi, buffers, mu, wd, create_graph=True)
    return _grads(_loss(model, {**w1, **alphas}, xv, yv), list(alphas.values()))


def alpha_grad_fd(
    model, xt, yt, xv, yv, xi, buffers: Buffers, mu, wd, radius=0.01, ptdarts_bug=False
) -> list[torch.Tensor]:
    """Second-order alpha gradient with H v' by a central finite difference.

    dalpha - xi * (g+ - g-) / (2 eps), eps = radius / ||v'||, g+- = grad_alpha
    L_train(w +- eps v'), v' = grad_w' L_val(w', alpha). ``ptdarts_bug=True``
    reproduces pt.darts's ``(g+ - g-) / 2 * eps`` instead.
    """
    alphas = dict(model.named_alphas())
    a_list = list(alphas.values())
    weights = {n: w.detach() for n, w in model.named_weights()}
    w1 = virtual_step(model, xt, yt, xi, buffers, mu, wd)
    w1 = {n: t.detach().requires_grad_(True) for n, t in w1.items()}
    loss_v = _loss(model, {**w1, **alphas}, xv, yv)
    grads = _grads(loss_v, a_list + list(w1.values()))
    dalpha, dw = grads[: len(a_list)], grads[len(a_list) :]
    eps = radius / torch.cat([g.reshape(-1) for g in dw]).norm()

    def g_alpha(sign):
        wp = {n: w + sign * eps * d for (n, w), d in zip(weights.items(), dw, strict=True)}
        return _grads(_loss(model, {**wp, **alphas}, xt, yt), a_list)

    gp, gn = g_alpha(1.0), g_alpha(-1.0)
    if ptdarts_bug:
        hess = [(p - n) / 2.0 * eps for p, n in zip(gp, gn, strict=True)]
    else:
        hess = [(p - n) / (2.0 * eps) for p, n in zip(gp, gn, strict=True)]
    return [d - xi * h for d, h in zip(dalpha, hess, strict=True)]


def make_optimizers(
    model,
    w_lr=0.025,
    w_momentum=0.9,
    w_weight_decay=3e-4,
    alpha_lr=3e-4,
    alpha_betas=(0.5, 0.999),
    alpha_weight_decay=1e-3,
):
    """pt.darts's optimizers: SGD on the weights, Adam (coupled L2) on the alphas."""
    w_optim = torch.optim.SGD(
        model.weights(), w_lr, momentum=w_momentum, weight_decay=w_weight_decay
    )
    a_optim = torch.optim.Adam(
        model.alphas(), alpha_lr, betas=alpha_betas, weight_decay=alpha_weight_decay
    )
    return w_optim, a_optim


def search_step(
    model, w_optim, a_optim, xt, yt, xv, yv, lr, mode, mu=0.9, wd=3e-4, grad_clip=5.0
) -> torch.Tensor:
    """One pt.darts search step; returns the (detached) training loss.

    ``lr`` is the current weight learning rate: xi of the virtual step, and set
    on ``w_optim``. ``mode``: "first", "second" (exact) or "fd" (corrected
    finite difference).
    """
    alphas = list(model.alphas())
    if mode == "first":
        ga = alpha_grad_first(model, xv, yv)
    else:
        bufs = momentum_buffers(model, w_optim)
        if mode == "second":
            ga = alpha_grad_exact(model, xt, yt, xv, yv, lr, bufs, mu, wd)
        elif mode == "fd":
            ga = alpha_grad_fd(model, xt, yt, xv, yv, lr, bufs, mu, wd)
        else:
            raise ValueError(f"unknown mode {mode!r}; use first, second or fd")
    a_optim.zero_grad()
    for a, g in zip(alphas, ga, strict=True):
        a.grad = g.detach()
    a_optim.step()

    for group in w_optim.param_groups:
        group["lr"] = lr
    weights = list(model.weights())
    w_optim.zero_grad()
    loss = model.loss(xt, yt)  # the real step: BN running statistics update here
    for w, g in zip(weights, _grads(loss, weights), strict=True):
        w.grad = g
    nn.utils.clip_grad_norm_(weights, grad_clip)
    w_optim.step()
    return loss.detach()
