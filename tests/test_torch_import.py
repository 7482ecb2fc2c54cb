"""The scripts take PyTorch checkpoints: train_final.py evaluates an imported final
network and gets PyTorch's own accuracy; train_search.py starts from a search one."""

import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("torch_one_thread")

from tiny_flags import SEARCH_TINY  # noqa: E402

import train_final  # noqa: E402
import train_search  # noqa: E402
from darts_jax import data  # noqa: E402
from darts_jax import genotypes as G  # noqa: E402
from darts_jax.interop import torch_ref as tr  # noqa: E402


def _torch_accuracy(model, info, ds) -> float:
    """Top-1 of a PyTorch model on the test split, with darts_jax's normalisation."""
    x = ds.test_images.astype(np.float64) / 255.0
    x = (x - np.array(info.mean)) / np.array(info.std)
    with torch.no_grad():
        logits, _ = model(torch.from_numpy(x.transpose(0, 3, 1, 2)).double())
    return float((logits.argmax(1).numpy() == ds.test_labels).mean())


def test_eval_only_of_a_torch_final_checkpoint_reproduces_its_accuracy(tmp_path, capsys):
    torch.manual_seed(0)
    model = tr.AugmentCNN(8, 1, 4, 10, 3, False, G.MNIST).double()
    ds = data.load("digits")
    with torch.no_grad():  # BN statistics that are not the defaults
        model.train()
        model(torch.randn(16, 1, 8, 8, dtype=torch.float64) * 2 + 0.5)
    model.eval()
    path = tmp_path / "augment.pth.tar"
    torch.save(model.state_dict(), path)
    args = ["--name", "t", "--dataset", "digits", "--eval_only", "--genotype", "MNIST"]
    assert train_final.main([*args, "--torch_checkpoint", str(path)]) == 0
    printed = capsys.readouterr().out
    got = float(re.search(r"Prec@1 ([\d.]+)%", printed).group(1)) / 100
    # Printed to 1e-6; one image of 360 would differ by 2.8e-3.
    assert got == pytest.approx(_torch_accuracy(model, ds.info, ds), abs=1e-6)


def test_torch_final_checkpoint_errors_exit_2(tmp_path, capsys):
    path = tmp_path / "bad.pt"
    torch.save({"stem.0.weight": torch.zeros(3)}, path)
    args = ["--name", "t", "--dataset", "digits", "--eval_only", "--genotype", "MNIST"]
    assert train_final.main([*args, "--torch_checkpoint", str(path)]) == 2
    assert "--torch_checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_final.main(
            ["--name", "t", "--dataset", "digits", "--genotype", "MNIST"]
            + ["--torch_checkpoint", str(path)]
        )
    assert "needs --eval_only and --genotype" in capsys.readouterr().err
    # A file that is no checkpoint at all: torch.load's complaint, named as such.
    path.write_bytes(b"not a checkpoint\n")
    assert train_final.main([*args, "--torch_checkpoint", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"--torch_checkpoint {path}: not a PyTorch checkpoint that torch.load reads (" in err


def test_search_starts_from_a_torch_search_checkpoint(tmp_path, capsys):
    torch.manual_seed(0)
    model = tr.SearchCNNController(1, 4, 10, 3, n_nodes=2)
    with torch.no_grad():
        model.alpha_normal[0][0, 2] = 5.0  # an alpha the import must carry over
    path = tmp_path / "search.pt"
    torch.save(model.state_dict(), path)
    base = ["--out_dir", str(tmp_path), *SEARCH_TINY, "--epochs", "1"]
    assert train_search.main(["--name", "s", *base, "--init_from", str(path)]) == 0
    log = open(tmp_path / "s" / "s.log").read()
    assert f"Initialised from {path} (ptdarts_search)" in log
    # One search step moves alpha by ~3e-4 at most: skip_connect keeps ~0.97 of edge 0.
    first_alpha_row = re.search(r"# Alpha - normal\n.*\| \[\[([\d. ]+)\]", log).group(1)
    assert float(first_alpha_row.split()[2]) > 0.9

    flags = ["--name", "m", *base, "--init_from", str(path), "--init_channels", "8"]
    assert train_search.main(flags) == 2
    assert "does not match the flags: C 4 (flags: 8)" in capsys.readouterr().err
