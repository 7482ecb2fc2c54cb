"""The PyTorch reference (darts_jax.interop.torch_ref): pt.darts layouts, sizes and alpha gradients."""

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("torch_one_thread")

from darts_jax import genotypes as gt  # noqa: E402
from darts_jax.interop import torch_ref as tr  # noqa: E402

# Copies of ../shared/reference/*.tsv: the state_dict layouts of the two PyTorch projects.
REF_DIR = Path(__file__).resolve().parent / "data"
F64 = torch.float64


def _tsv(name):
    path = REF_DIR / name
    rows = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            rows.append(tuple(line.split("\t")))
    return rows


def _layout(model):
    return [
        (k, str(tuple(v.shape)), str(v.dtype).removeprefix("torch."))
        for k, v in model.state_dict().items()
    ]


@pytest.fixture(scope="module")
def search_c16():
    torch.manual_seed(0)
    return tr.SearchCNNController(3, 16, 10, 8)


def _augment(genotype):
    return tr.AugmentCNN(32, 3, 36, 10, 20, True, genotype)


def _n_params(model):
    return sum(p.numel() for k, p in model.named_parameters() if not k.startswith("aux_head"))


def test_search_state_dict_matches_ptdarts(search_c16):
    assert _layout(search_c16) == _tsv("ptdarts_search_cnn_C16_L8.tsv")


def test_augment_state_dict_matches_ptdarts():
    assert _layout(_augment(gt.CIFAR10)) == _tsv("ptdarts_augment_cnn_cifar10_C36_L20_aux.tsv")


def test_weight_counts(search_c16):
    assert sum(p.numel() for p in search_c16.weights()) == 1_930_618
    assert sum(p.numel() for p in search_c16.alphas()) == 2 * 14 * 8
    assert round(_n_params(_augment(gt.CIFAR10)) / 1e6, 2) == 2.84
    assert round(_n_params(_augment(gt.DARTS_V2)) / 1e6, 2) == 3.35


def test_search_forward_shapes():
    torch.manual_seed(0)
    model = tr.SearchCNNController(3, 4, 10, 3).train()
    assert [c.reduction for c in model.net.cells] == [False, True, True]
    assert [tuple(a.shape) for a in model.alphas()] == [(i + 2, 8) for i in range(4)] * 2
    x = torch.randn(2, 3, 8, 8)
    assert model(x).shape == (2, 10)
    model.eval()
    assert model(x).shape == (2, 10)
    five = tr.SearchCNNController(3, 4, 10, 5)
    assert [c.reduction for c in five.net.cells] == [False, True, False, True, False]


def test_augment_forward_shapes():
    torch.manual_seed(0)
    model = tr.AugmentCNN(32, 3, 4, 10, 3, True, gt.DARTS_V2)
    assert [c.reduction for c in model.cells] == [False, True, True]
    model.drop_path_prob(0.2)
    x = torch.randn(2, 3, 32, 32)
    logits, aux = model.train()(x)
    assert logits.shape == (2, 10) and aux.shape == (2, 10)
    logits, aux = model.eval()(x)
    assert logits.shape == (2, 10) and aux is None
    no_aux = tr.AugmentCNN(16, 3, 4, 10, 3, False, gt.CIFAR10).train()
    logits, aux = no_aux(torch.randn(2, 3, 16, 16))
    assert logits.shape == (2, 10) and aux is None


def test_drop_path_masks_whole_samples():
    torch.manual_seed(0)
    dp = tr.DropPath(0.5).train()
    y = dp(torch.ones(400, 2, 3, 3))
    per_sample = y.reshape(400, -1)
    assert set(per_sample.unique().tolist()) == {0.0, 2.0}
    assert (per_sample == per_sample[:, :1]).all()
    assert torch.equal(dp.eval()(torch.ones(4, 2, 3, 3)), torch.ones(4, 2, 3, 3))


@pytest.fixture(scope="module")
def tiny64():
    torch.manual_seed(1)
    model = tr.SearchCNNController(3, 4, 10, 3).to(F64).train()
    with torch.no_grad():  # alphas away from uniform so the ops' weights differ
        for a in model.alphas():
            a.normal_(0.0, 0.5)
    g = torch.Generator().manual_seed(2)
    xt, xv = (torch.randn(2, 3, 8, 8, generator=g, dtype=F64) for _ in range(2))
    yt, yv = torch.tensor([1, 3]), torch.tensor([0, 7])
    bufs = {n: 0.1 * torch.randn(p.shape, generator=g, dtype=F64) for n, p in model.named_weights()}
    return model, (xt, yt, xv, yv), bufs


def _flat(gs):
    return torch.cat([g.reshape(-1) for g in gs])


def _bn_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_b" in k}


def test_exact_with_xi_zero_is_first_order(tiny64):
    model, (xt, yt, xv, yv), bufs = tiny64
    first = _flat(tr.alpha_grad_first(model, xv, yv))
    exact = _flat(tr.alpha_grad_exact(model, xt, yt, xv, yv, 0.0, bufs, 0.9, 3e-4))
    torch.testing.assert_close(exact, first, rtol=1e-12, atol=1e-15)


def test_exact_matches_corrected_fd_and_keeps_bn_stats(tiny64):
    model, (xt, yt, xv, yv), bufs = tiny64
    before = _bn_state(model)
    xi = 0.1
    first = _flat(tr.alpha_grad_first(model, xv, yv))
    exact = _flat(tr.alpha_grad_exact(model, xt, yt, xv, yv, xi, bufs, 0.9, 3e-4))
    fd = _flat(tr.alpha_grad_fd(model, xt, yt, xv, yv, xi, bufs, 0.9, 3e-4, radius=1e-5))
    # the second-order term itself, not only the sum, must agree
    h_exact, h_fd = exact - first, fd - first
    assert h_exact.norm() > 1e-2 * first.norm()
    assert (h_fd - h_exact).norm() <= 1e-6 * h_exact.norm()
    # pt.darts's precedence bug scales the term by eps^2 (eps = 0.01 / ||v'||): near first order
    bug = _flat(tr.alpha_grad_fd(model, xt, yt, xv, yv, xi, bufs, 0.9, 3e-4, ptdarts_bug=True))
    assert (bug - first).norm() < 1e-2 * h_exact.norm()
    after = _bn_state(model)
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k


@pytest.mark.parametrize("mode", ["first", "second", "fd"])
def test_search_step_changes_alphas_and_weights(mode):
    torch.manual_seed(0)
    model = tr.SearchCNNController(3, 4, 10, 3).train()
    w_optim, a_optim = tr.make_optimizers(model)
    xt, xv = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    yt, yv = torch.tensor([1, 2]), torch.tensor([3, 4])
    alphas0 = _flat([a.detach().clone() for a in model.alphas()])
    weights0 = _flat([w.detach().clone() for w in model.weights()])
    assert tr.momentum_buffers(model, w_optim) == {}
    for _ in range(2):  # the second step's virtual step uses the momentum buffers
        loss = tr.search_step(model, w_optim, a_optim, xt, yt, xv, yv, 0.025, mode)
        assert torch.isfinite(loss)
    assert len(tr.momentum_buffers(model, w_optim)) == len(list(model.weights()))
    assert not torch.equal(_flat(list(model.alphas())).detach(), alphas0)
    assert not torch.equal(_flat(list(model.weights())).detach(), weights0)
