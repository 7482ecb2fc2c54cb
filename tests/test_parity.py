"""PyTorch checkpoint conversion (interop.convert) and numerical parity with the
PyTorch reference (interop.parity), float64 on both sides, rel 1e-10."""

import math
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("torch_one_thread")

import jax  # noqa: E402
from flax import traverse_util  # noqa: E402

from darts_jax import genotypes as gt  # noqa: E402
from darts_jax.final_model import FinalNetwork  # noqa: E402
from darts_jax.interop import convert, parity  # noqa: E402
from darts_jax.interop import torch_ref as tr  # noqa: E402
from darts_jax.search_model import SearchNetwork  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
ROOT = Path(__file__).resolve().parents[1]
TOL = parity.TOL_F64
# A genotype without pooling (the official final network has no BN after a pool).
NO_POOL = gt.from_str(
    "Genotype(normal=[[('sep_conv_3x3', 0), ('dil_conv_5x5', 1)], [('skip_connect', 0), "
    "('sep_conv_5x5', 2)]], normal_concat=range(2, 4), reduce=[[('dil_conv_3x3', 0), "
    "('skip_connect', 1)], [('skip_connect', 2), ('sep_conv_3x3', 0)]], reduce_concat=range(2, 4))"
)


def _tsv(name):
    rows = []
    for line in (DATA / name).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, shape, _ = line.split("\t")
            rows.append((key, tuple(int(d) for d in shape.strip("()").split(",") if d.strip())))
    return rows


def _flat(tree):
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(dict(tree)).items()}


def _assert_trees_equal(a, b):
    fa, fb = _flat(a), _flat(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        assert fa[k].dtype == fb[k].dtype and np.array_equal(fa[k], fb[k]), k


def _assert_state_dicts_equal(a, b, nbt=None):
    assert list(a) == list(b)
    for k in a:
        if k.endswith("num_batches_tracked"):
            if nbt is not None:
                assert int(b[k]) == nbt and b[k].dtype == torch.int64, k
            continue
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def _warm(net, size, n=2):
    """Nontrivial BN running statistics (pool copies stay equal, as in real training)."""
    net.train()
    with torch.no_grad():
        for _ in range(n):
            net(torch.randn(2, 3, size, size))
    return net


@pytest.fixture(scope="module")
def search_net():
    torch.manual_seed(0)
    net = tr.SearchCNNController(3, 4, 10, 3, n_nodes=4)
    with torch.no_grad():
        for a in net.alphas():
            a.normal_()
    return _warm(net, 8)


@pytest.fixture(scope="module")
def final_net():
    torch.manual_seed(1)
    return _warm(tr.AugmentCNN(32, 3, 4, 10, 3, True, gt.MNIST), 32)


# ---------------------------------------------------------------------------
# Layouts and converters (no compiles: shapes by jax.eval_shape)


@pytest.mark.parametrize(
    "layout, model, tsv",
    [
        ("ptdarts_search", SearchNetwork(16, 10, 8), "ptdarts_search_cnn_C16_L8.tsv"),
        ("official_search", SearchNetwork(16, 10, 8), "official_search_network_C16_L8.tsv"),
        (
            "ptdarts_final",
            FinalNetwork(gt.CIFAR10, 36, 10, 20, True),
            "ptdarts_augment_cnn_cifar10_C36_L20_aux.tsv",
        ),
        (
            "official_final",
            FinalNetwork(gt.DARTS_V2, 36, 10, 20, True),
            "official_network_cifar_DARTS_V2_C36_L20_aux.tsv",
        ),
    ],
)
def test_layout_equals_reference_tsv(layout, model, tsv):
    assert convert.torch_layout(layout, model) == _tsv(tsv)


def test_ptdarts_search_round_trips(search_net):
    sd = search_net.state_dict()
    model, variables, alphas = convert.from_torch(sd, "ptdarts_search")
    assert (model.C, model.num_classes, model.layers, model.n_nodes) == (4, 10, 3, 4)
    assert model.stem_multiplier == 3
    back = convert.to_torch(variables, alphas, "ptdarts_search", num_batches_tracked=7)
    _assert_state_dicts_equal(sd, back, nbt=7)
    # alphas: per-node matrices stacked in edge order
    np.testing.assert_array_equal(alphas["reduce"][2:5], sd["alpha_reduce.1"].numpy())
    # ours -> torch -> ours
    _, variables2, alphas2 = convert.from_torch(back, "ptdarts_search")
    _assert_trees_equal(variables, variables2)
    _assert_trees_equal(alphas, alphas2)
    # and the state_dict loads into the PyTorch model
    fresh = tr.SearchCNNController(3, 4, 10, 3, n_nodes=4)
    fresh.load_state_dict(back)


@pytest.mark.parametrize("aux", [True, False])
def test_ptdarts_final_round_trips(final_net, aux):
    if aux:
        net = final_net
    else:
        torch.manual_seed(2)
        net = _warm(tr.AugmentCNN(16, 3, 4, 10, 3, False, gt.MNIST), 16)
    sd = net.state_dict()
    model, variables, alphas = convert.from_torch(sd, "ptdarts_final", genotype="MNIST")
    assert alphas is None and model.auxiliary is aux and model.layers == 3
    back = convert.to_torch(variables, None, "ptdarts_final", genotype=gt.MNIST)
    _assert_state_dicts_equal(sd, back, nbt=0)
    _, variables2, _ = convert.from_torch(back, "ptdarts_final", genotype=gt.MNIST)
    _assert_trees_equal(variables, variables2)


def test_official_search_round_trips_and_permutes_alpha_columns(search_net):
    _, variables, alphas = convert.from_torch(search_net.state_dict(), "ptdarts_search")
    official = convert.to_torch(variables, alphas, "official_search")
    # official columns: none first
    none = gt.PRIMITIVES.index("none")
    np.testing.assert_array_equal(
        official["alphas_normal"][:, 0].numpy(), alphas["normal"][:, none]
    )
    np.testing.assert_array_equal(
        official["alphas_reduce"][:, 1:].numpy(), alphas["reduce"][:, :none]
    )
    model, variables2, alphas2 = convert.from_torch(official, "official_search")
    assert (model.C, model.layers, model.n_nodes) == (4, 3, 4)
    _assert_trees_equal(variables, variables2)
    _assert_trees_equal(alphas, alphas2)
    # same tensors under the two projects' names
    ptd = search_net.state_dict()
    assert torch.equal(
        official["cells.2._ops.0._ops.3.conv_1.weight"],
        ptd["net.cells.2.dag.0.0._ops.2.conv1.weight"],
    )
    assert torch.equal(
        official["cells.0._ops.4._ops.5.op.6.weight"],
        ptd["net.cells.0.dag.1.2._ops.4.net.1.net.2.weight"],
    )


def test_official_final_converts_without_pools_and_refuses_pools():
    torch.manual_seed(3)
    net = _warm(tr.AugmentCNN(32, 3, 4, 10, 3, True, NO_POOL), 32)
    _, variables, _ = convert.from_torch(net.state_dict(), "ptdarts_final", genotype=NO_POOL)
    official = convert.to_torch(variables, None, "official_final", genotype=NO_POOL)
    assert "auxiliary_head.features.5.weight" in official and "classifier.bias" in official
    model, variables2, _ = convert.from_torch(official, "official_final", genotype=NO_POOL)
    assert model.auxiliary
    _assert_trees_equal(variables, variables2)

    # DARTS_V2 pools without BN in the official network: imported as pool_bn=False,
    # and exported back exactly; a pt.darts model (BN after pools) cannot be exported.
    torch.manual_seed(4)
    ptd = tr.AugmentCNN(32, 3, 4, 10, 3, True, gt.DARTS_V2)
    _, v2, _ = convert.from_torch(ptd.state_dict(), "ptdarts_final", genotype=gt.DARTS_V2)
    with pytest.raises(NotImplementedError, match="reduce node 0 edge 0 \\(max_pool_3x3\\)"):
        convert.to_torch(v2, None, "official_final", genotype=gt.DARTS_V2)
    layout = convert.torch_layout("official_final", FinalNetwork(gt.DARTS_V2, 4, 10, 3, True))
    sd = {
        k: torch.arange(math.prod(s), dtype=torch.float32).reshape(s) / 7 if s else torch.tensor(1)
        for k, s in layout
    }
    model, v_official, _ = convert.from_torch(sd, "official_final", genotype="DARTS_V2")
    assert not model.pool_bn
    back = convert.to_torch(v_official, None, "official_final", genotype=gt.DARTS_V2)
    assert list(back) == [k for k, _ in layout]
    assert all(torch.equal(back[k], sd[k]) for k, s in layout if s)


def test_strict_key_and_shape_errors_list_every_name(final_net):
    sd = dict(final_net.state_dict())
    sd["extra.weight"] = torch.zeros(1)
    del sd["cells.0.dag.0.0.0.net.0.net.1.weight"]
    sd["linear.bias"] = torch.zeros(3)
    del sd["stem.1.num_batches_tracked"]  # optional: PyTorch < 0.4.1 has none
    with pytest.raises(ValueError) as e:
        convert.from_torch(sd, "ptdarts_final", genotype=gt.MNIST)
    msg = str(e.value)
    assert "1 unknown key(s): extra.weight" in msg
    assert "1 missing key(s): cells.0.dag.0.0.0.net.0.net.1.weight" in msg
    assert "linear.bias (3,) != expected (10,)" in msg
    assert "num_batches_tracked" not in msg
    # a wrong genotype shows as unknown and missing keys
    with pytest.raises(ValueError, match="unknown key"):
        convert.from_torch(final_net.state_dict(), "ptdarts_final", genotype=gt.CIFAR10)
    with pytest.raises(ValueError, match="needs genotype"):
        convert.from_torch(final_net.state_dict(), "ptdarts_final")
    with pytest.raises(ValueError, match="is the layout right"):
        convert.from_torch(final_net.state_dict(), "ptdarts_search")
    with pytest.raises(ValueError, match="unknown layout"):
        convert.from_torch(final_net.state_dict(), "pt_darts")
    with pytest.raises(TypeError, match="unknown model argument"):
        convert.from_torch(final_net.state_dict(), "ptdarts_final", genotype=gt.MNIST, width=3)
    # an override that contradicts the shapes
    with pytest.raises(ValueError, match="shape mismatch"):
        convert.from_torch(final_net.state_dict(), "ptdarts_final", genotype=gt.MNIST, C=8)


def test_strict_on_our_side(search_net):
    _, variables, alphas = convert.from_torch(search_net.state_dict(), "ptdarts_search")
    params = dict(variables["params"])
    params["bogus"] = np.zeros(2)
    with pytest.raises(ValueError, match="unknown leaf.*bogus"):
        convert.to_torch({**variables, "params": params}, alphas, "ptdarts_search")
    with pytest.raises(ValueError, match="needs the alphas"):
        convert.to_torch(variables, None, "ptdarts_search")


def test_pool_bn_copies_must_agree_unless_averaged(search_net):
    sd = dict(search_net.state_dict())
    a, b = (f"net.cells.0.dag.{i}.0._ops.1.bn.running_mean" for i in (0, 3))
    assert torch.equal(sd[a], sd[b])  # identical in a trained model: same pooled input
    sd[b] = sd[b] + 1.0
    with pytest.raises(ValueError, match=f"{b} vs {a}"):
        convert.from_torch(sd, "ptdarts_search")
    _, variables, _ = convert.from_torch(sd, "ptdarts_search", pool_bn_stats="mean")
    got = variables["batch_stats"]["cell0"]["input_edges"]["avg_pool_3x3_bn"]["mean"][0]
    np.testing.assert_allclose(got, sd[a].numpy() + 0.25, rtol=1e-6)  # 4 edges leave state 0


def test_gradient_and_buffer_trees_map_by_name(search_net):
    model, variables, alphas = convert.from_torch(search_net.state_dict(), "ptdarts_search")
    named = {n: p.detach() for n, p in search_net.named_weights()}
    params = convert.arrays_to_tree(named, "ptdarts_search", model)["params"]
    _assert_trees_equal(params, variables["params"])
    back = convert.tree_to_arrays({"params": params}, "ptdarts_search", model)
    assert list(back) == list(named)
    alpha_tree = convert.arrays_to_tree(
        dict(search_net.named_alphas()), "ptdarts_search", model, ("alphas",)
    )["alphas"]
    _assert_trees_equal(alpha_tree, alphas)
    with pytest.raises(ValueError, match="missing key"):
        convert.arrays_to_tree(dict(list(named.items())[1:]), "ptdarts_search", model)


def test_reads_files_data_parallel_and_pickled_modules(tmp_path, search_net, final_net):
    ref_vars = convert.from_torch(search_net.state_dict(), "ptdarts_search")[1]
    torch.save(search_net.state_dict(), tmp_path / "sd.pt")
    _assert_trees_equal(convert.from_torch(tmp_path / "sd.pt", "ptdarts_search")[1], ref_vars)
    # pt.darts's augment.py: DataParallel ("module." prefix), here inside a checkpoint dict
    dp = torch.nn.DataParallel(final_net).state_dict()
    torch.save({"state_dict": dp, "epoch": 3}, tmp_path / "ckpt.pth.tar")
    loaded = convert.from_torch(tmp_path / "ckpt.pth.tar", "ptdarts_final", genotype=gt.MNIST)[1]
    _assert_trees_equal(
        loaded, convert.from_torch(final_net, "ptdarts_final", genotype=gt.MNIST)[1]
    )
    # pt.darts saves whole models: classes from a package that is gone when loading
    fake = types.ModuleType("fake_ptdarts_models")
    Controller = type("SearchCNNController", (tr.SearchCNNController,), {})
    Controller.__module__ = fake.__name__
    fake.SearchCNNController = Controller
    sys.modules[fake.__name__] = fake
    try:
        whole = Controller(3, 4, 10, 3, n_nodes=4)
        whole.load_state_dict(search_net.state_dict())
        torch.save(whole, tmp_path / "whole.pth.tar")
    finally:
        del sys.modules[fake.__name__]
    _assert_trees_equal(
        convert.from_torch(tmp_path / "whole.pth.tar", "ptdarts_search")[1], ref_vars
    )
    assert fake.__name__ not in sys.modules


def test_convert_module_does_not_import_torch():
    code = (
        "import sys; from darts_jax.interop import convert; "
        "from darts_jax.search_model import SearchNetwork; "
        "convert.torch_layout('ptdarts_search', SearchNetwork(4, 10, 3, 2)); "
        "print('torch' in sys.modules)"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, check=True
    )
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------------
# Numerical parity (float64): one run of the parity command's code
#
# Run with --step-order 1 to keep the file within ~3 minutes on 2 cores: the
# exact and finite-difference second-order alpha gradients are still compared
# on their own; `python -m darts_jax.interop.parity` also checks the complete
# second-order step.


@pytest.fixture(scope="module")
def report():
    return parity.evaluate(["--config", "tiny", "--order", "2", "--step-order", "1"])


def _rows(report, section, prefix=""):
    rows = [r for r in report.rows if r.section == section and r.name.startswith(prefix)]
    assert rows, (section, prefix)
    return rows


def _check(report, rows):
    bad = [r for r in rows if not r.rel <= TOL]
    assert not bad, "\n" + parity.format_table(rows, "float64")


def test_search_forward_loss_and_bn_statistics(report):
    rows = [r for r in _rows(report, "search") if "grad" not in r.name and ":" not in r.name]
    assert {r.name for r in rows} == {
        "logits (train-mode BN)",
        "loss",
        "BN running stats after it",
        "logits (eval-mode BN)",
    }
    _check(report, rows)


def test_edge_mapping_at_four_nodes(report):
    _check(report, _rows(report, "search, 4 nodes"))


def test_search_weight_gradients_by_group(report):
    rows = _rows(report, "search", "weight grad")
    groups = {r.name for r in rows}
    for op in ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5", "stem", "preproc"):
        assert f"weight grad [{op}]" in groups
    assert "weight grad [skip_connect (FactorizedReduce)]" in groups
    _check(report, rows)


@pytest.mark.parametrize(
    "name",
    ["first order", "second order (exact)", "second order (fd, corrected)"],
)
def test_alpha_gradients(report, name):
    rows = _rows(report, "search", f"alpha grad, {name}")
    assert rows[0].scale > 0
    _check(report, rows)


def test_second_order_term_is_significant(report):
    # the exact gradient must differ from first order, or its parity would prove little
    assert report.info["|exact - first| / |first| (alpha grad, torch)"] > 0.1


def test_complete_search_step(report):
    rows = _rows(report, "search", "step (")
    assert {r.name.split(": ")[1] for r in rows} == {
        "loss",
        "alphas",
        "weights",
        "momentum buffers",
        "BN running stats",
    }
    _check(report, rows)


def test_weight_optimizer_with_clipping_active(report):
    _check(report, _rows(report, "search", "SGD step, clip active"))


def test_final_network_with_aux_head(report):
    rows = _rows(report, "final")
    names = {r.name for r in rows}
    assert {
        "logits (eval-mode BN)",
        "train loss (CE + 0.4 CE_aux)",
        "aux logits (train-mode BN)",
    } <= names
    assert "weight grad [aux_head]" in names and "weight grad [max_pool_3x3]" in names
    _check(report, rows)


def test_report_text_and_exit_status(report):
    assert report.exit_code == (1 if parity.failures(report.rows, "float64") else 0)
    for r in report.rows:
        assert f"{r.section}: {r.name}" in report.text
    assert "rel diff" in report.text


def test_main_prints_and_returns_status(monkeypatch, capsys):
    rows = [parity.Row("s", "fine", 1e-16, 1.0), parity.Row("s", "off", 1e-6, 1.0)]
    monkeypatch.setattr(parity, "run", lambda *a, **k: (rows, {"note": 1.0}))
    assert parity.main(["--dtype", "float64"]) == 1
    out = capsys.readouterr().out
    assert "s: off" in out and "FAIL" in out and "1 of 2 rows exceed" in out
    assert f"JAX on {jax.default_backend()} (" in out and "PyTorch on the CPU" in out
    assert parity.main(["--dtype", "float32"]) == 0  # float32 rows are only reported
    rows[1] = parity.Row("s", "off", float("nan"), 1.0)
    assert parity.main(["--dtype", "float32"]) == 1
