"""End to end: train_search.py on the embedded digits, tiny network."""

import glob
import os
import re
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from tiny_flags import SEARCH_TINY

import train_search
from darts_jax import config, genotypes, parallel, reporting, search_loop

TINY = SEARCH_TINY


def test_one_tiny_search_writes_log_plots_tensorboard_and_genotype(tmp_path):
    out = str(tmp_path)
    assert train_search.main(["--name", "e2e", "--epochs", "1", "--out_dir", out, *TINY]) == 0
    run = os.path.join(out, "e2e")
    log = open(os.path.join(run, "e2e.log")).read()
    assert "Train: [ 1/1] Step 002/002 Loss" in log
    assert "Valid: [ 1/1] Final Prec@1" in log and "Final best Prec@1 = " in log
    assert "ALPHA_GRAD=second" in log and "# Alpha - normal" in log
    assert "alpha gradient: second, remat: none (--remat auto)" in log  # tiny: nothing recomputed
    genotype = genotypes.from_str(open(os.path.join(run, "genotype.txt")).read())
    assert len(genotype.normal) == 2
    assert f"Best Genotype = {genotypes.to_str(genotype)}" in log
    assert glob.glob(os.path.join(run, "tb", "events.out.tfevents.*"))
    ext = "png" if shutil.which("dot") else "gv"
    for kind in ("normal", "reduce"):
        assert os.path.exists(os.path.join(run, "plots", f"EP01-{kind}.{ext}"))

    # A second run with the same name refuses to overwrite (--resume continues it:
    # the next test).
    assert train_search.main(["--name", "e2e", "--epochs", "2", "--out_dir", out, *TINY]) == 2


def _latest_state_leaves(run_dir: str) -> list:
    with ocp.CheckpointManager(os.path.join(run_dir, "checkpoints")) as manager:
        args = ocp.args.Composite(state=ocp.args.StandardRestore())
        restored = manager.restore(manager.latest_step(), args=args)["state"]
        return jax.tree_util.tree_leaves(restored)


def _result_lines(log: str) -> list[str]:
    """The log's training, validation, alpha and genotype lines (no times, no paths)."""
    keep = re.compile(r"^(Train: |Valid: |genotype = |Best Genotype|Final best|\[\[|\s*\[)")
    messages = (line.split(" | ", 1)[-1] for line in log.splitlines())
    return [message for message in messages if keep.match(message)]


def test_a_search_stopped_by_sigterm_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    out = str(tmp_path)
    # One (reduction) cell, first order: the loop is under test, and this compiles fast.
    flags = ["--epochs", "1", "--out_dir", out, "--alpha_grad", "first", *TINY, "--layers", "1"]
    # --resume with nothing saved yet (a job script that always passes it) starts afresh.
    assert train_search.main(["--name", "whole", "--resume", *flags]) == 0
    whole_log = open(os.path.join(out, "whole", "whole.log")).read()
    assert "--resume: no checkpoint under" in whole_log and "starting a new search" in whole_log

    real_add = reporting.EpochMeter.add

    def add_then_sigterm_at_step_1(meter, i, metrics, print_freq):
        if i == 1:  # as a cluster scheduler would, during the epoch's second step
            os.kill(os.getpid(), signal.SIGTERM)
        return real_add(meter, i, metrics, print_freq)

    monkeypatch.setattr(reporting.EpochMeter, "add", add_then_sigterm_at_step_1)
    assert train_search.main(["--name", "cut", *flags]) == 128 + signal.SIGTERM
    monkeypatch.undo()
    cut = os.path.join(out, "cut")
    assert (
        "Saved a checkpoint after step 2/3 of epoch 1" in open(os.path.join(cut, "cut.log")).read()
    )
    assert not os.path.exists(os.path.join(cut, "genotype.txt"))

    assert train_search.main(["--name", "cut", "--resume", *flags]) == 0
    log = open(os.path.join(cut, "cut.log")).read()
    assert "in epoch 1 at step 2" in log and "flags differ" not in log
    assert log.count("Step 000/002") == 1  # steps 0 and 1 were not run again
    whole_log = open(os.path.join(out, "whole", "whole.log")).read()
    # The same steps on the same batches: the same train averages (the saved totals
    # count the first two steps), validation, alphas, genotype and final weights.
    assert _result_lines(log) == _result_lines(whole_log) and "Step 002/002" in log
    leaves = _latest_state_leaves(cut)
    assert len(leaves) > 20  # weights, statistics, alphas, both optimizers, step, RNG
    for a, b in zip(leaves, _latest_state_leaves(os.path.join(out, "whole")), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)

    # --resume after the last epoch's end goes on with the next epoch.
    more = [*flags, "--epochs", "2", "--name", "cut", "--resume"]
    assert train_search.main(more) == 0
    log = open(os.path.join(cut, "cut.log")).read()
    assert "after epoch 1" in log and "Train: [ 2/2] Final Prec@1" in log
    assert "The resumed run's flags differ from the saved run's: --epochs 1 -> 2" in log
    assert "Train: [ 1/2]" not in log  # epoch 1 was not run again


def test_a_diverged_search_exits_1_with_the_message(tmp_path, monkeypatch, capsys):
    def diverge(cfg):
        raise reporting.Diverged("the training loss is nan at step 7 of epoch 2: ...")

    monkeypatch.setattr(search_loop, "run_search", diverge)
    assert train_search.main(["--name", "d", "--out_dir", str(tmp_path), *TINY]) == 1
    assert "error: the training loss is nan at step 7" in capsys.readouterr().err


def test_existing_run_without_resume_exits_2(tmp_path, capsys):
    os.makedirs(tmp_path / "x" / "checkpoints" / "0")
    assert train_search.main(["--name", "x", "--out_dir", str(tmp_path), *TINY]) == 2
    assert "--resume" in capsys.readouterr().err


def test_an_out_dir_that_cannot_be_written_exits_2(tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    flags = ["--name", "w", "--out_dir", str(tmp_path / "a_file"), *TINY]
    assert train_search.main(flags) == 2
    assert "cannot write the run folder" in capsys.readouterr().err


def test_a_batch_larger_than_the_split_exits_2(tmp_path, capsys):
    flags = ["--name", "b", "--out_dir", str(tmp_path), *TINY, "--batch_size", "719"]
    assert train_search.main(flags) == 2  # digits: 1,437 train images, 718 for the weights
    err = capsys.readouterr().err
    assert (
        "--batch_size 719 exceeds the 718 weight-split images (--train_portion 0.5 of 1437)" in err
    )
    flags = ["--name", "a", "--out_dir", str(tmp_path), *TINY, "--train_portion", "0.999"]
    assert train_search.main(flags) == 2  # 2 images left for the alphas, batches of 8
    assert "--batch_size 8 exceeds the 2 alpha-split images" in capsys.readouterr().err


def test_missing_data_exits_2_with_instructions(tmp_path, capsys):
    code = train_search.main(
        [
            "--name",
            "m",
            "--dataset",
            "cifar10",
            "--data_dir",
            str(tmp_path),
            "--out_dir",
            str(tmp_path),
        ]
    )
    assert code == 2
    assert "tfds build cifar10" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--w_lr", "0"], "--w_lr must be > 0"),
        (["--gpus", "a,b"], "--gpus must be"),
        (["--dataset", "svhn"], "unknown dataset"),
        (["--alpha_grad", "exact"], "invalid choice"),
        (["--remat", "layers"], "invalid choice"),
        (["--batch_size", "x"], "invalid int value"),
        (["--init_channels", "5"], "must be even"),
        (["--seed", "-1"], "--seed must be in [0, 2**32), got -1"),
    ],
)
def test_bad_flags_give_one_clear_message(flags, message, capsys):
    args = ["--name", "b", "--dataset", "digits"]
    for i in range(0, len(flags), 2):
        if flags[i] in args:
            args[args.index(flags[i]) + 1] = flags[i + 1]
        else:
            args += flags[i : i + 2]
    with pytest.raises(SystemExit) as info:
        train_search.main(args)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_import_darts_jax_does_not_import_torch():
    code = "import sys, darts_jax, darts_jax.search_loop, darts_jax.bench; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_remat_flag_builds_a_rematerialised_network():
    one_cpu = parallel.setup("0", 64)
    cfg = config.parse_args(["--name", "r", "--dataset", "digits", "--remat", "cells"])
    remat = search_loop.run_remat(cfg, 32, one_cpu)
    model = search_loop.build_model(cfg, 10, remat)
    assert model.remat_cells == (0, 1, 2, 3, 4) and model.C == 16 and model.layers == 8
    assert search_loop.build_hyper(cfg, remat).hvp_remat_cells == (0, 1, 2, 3, 4)
    # --remat hvp: a plain network; the first stage's cells recomputed inside H v only
    hvp = config.parse_args(["--name", "r", "--dataset", "digits", "--remat", "hvp"])
    assert search_loop.run_remat(hvp, 8, one_cpu) == "hvp"
    assert not search_loop.build_model(hvp, 10, "hvp").remat_cells
    assert search_loop.build_hyper(hvp, "hvp").hvp_remat_cells == (0, 1)
    # The default, auto: 'hvp' for CIFAR's 32x32 at the default batch and C on one
    # CPU device, 'none' for the digits' 8x8 and for the batch over 8 CPU devices
    default = config.parse_args(["--name", "r", "--dataset", "digits"])
    assert default.remat == "auto"
    assert search_loop.run_remat(default, 32, one_cpu) == "hvp"
    assert search_loop.run_remat(default, 8, one_cpu) == "none"
    assert search_loop.run_remat(default, 32, parallel.setup("all", 64)) == "none"
    assert not search_loop.build_model(default, 10, "none").remat_cells
    assert search_loop.build_hyper(default, "none").hvp_remat_cells == ()
    with pytest.raises(ValueError, match="resolve_remat first"):
        search_loop.build_model(default, 10, default.remat)
