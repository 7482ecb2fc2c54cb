"""End to end: train_final.py on the embedded digits (and mocked MNIST for the aux head)."""

import glob
import os
import re
import signal

import pytest
import tensorflow_datasets as tfds
from tiny_flags import TINY

import train_final
from darts_jax import final_loop, genotypes, reporting

# digits' 8x8 images are too small for the auxiliary head and the default 16-pixel
# cutout (both flag errors, tested below).
DIGITS_FINAL = ["--aux_weight", "0", "--cutout_length", "4"]


def _best(log: str) -> float:
    return float(re.search(r"Final best Prec@1 = ([\d.]+)%", log).group(1))


def test_tiny_training_writes_outputs_and_eval_only_reproduces_it(tmp_path, capsys, monkeypatch):
    out = str(tmp_path)
    geno_file = tmp_path / "genotype.txt"
    geno_file.write_text(genotypes.to_str(genotypes.CIFAR10) + "\n")
    base = ["--name", "f", "--dataset", "digits", "--out_dir", out, *DIGITS_FINAL, *TINY]
    assert train_final.main([*base, "--genotype", str(geno_file), "--epochs", "1"]) == 0
    run = os.path.join(out, "f")
    log = open(os.path.join(run, "f.log")).read()
    assert "Model size = " in log and "GENOTYPE=" in log
    assert "Train: [  1/1] Step 002/002 Loss" in log
    assert "Valid: [  1/1] Final Prec@1" in log
    assert glob.glob(os.path.join(run, "tb", "events.out.tfevents.*"))
    assert os.listdir(os.path.join(run, "best")) and os.listdir(os.path.join(run, "checkpoints"))
    assert glob.glob(os.path.join(run, "plots", "cell-normal.*"))

    # Evaluation only: the best checkpoint gives the logged accuracy again, and the
    # genotype comes from the checkpoint.
    capsys.readouterr()
    assert (
        train_final.main(["--name", "f", "--dataset", "digits", "--out_dir", out, "--eval_only"])
        == 0
    )
    printed = capsys.readouterr().out
    got = float(re.search(r"Prec@1 ([\d.]+)%", printed).group(1))
    assert got == pytest.approx(_best(log), abs=1e-4)

    flags = ["--name", "f", "--dataset", "digits", "--out_dir", out, "--eval_only"]
    assert train_final.main([*flags, "--genotype", "DARTS_V2"]) == 2
    assert "--genotype differs from the one" in capsys.readouterr().err

    # The same name again refuses to overwrite; --resume continues with epoch 2 ...
    assert train_final.main([*base, "--genotype", "CIFAR10", "--epochs", "2"]) == 2
    resume = [*base, "--genotype", "CIFAR10", "--epochs", "2", "--resume"]
    real_add = reporting.EpochMeter.add

    def add_then_ctrl_c_at_step_1(meter, i, metrics, print_freq):
        if (meter.epoch, i) == (1, 1):
            os.kill(os.getpid(), signal.SIGINT)
        return real_add(meter, i, metrics, print_freq)

    # ... where Ctrl-C during step 1 saves after it and stops (status 130) ...
    monkeypatch.setattr(reporting.EpochMeter, "add", add_then_ctrl_c_at_step_1)
    assert train_final.main(resume) == 128 + signal.SIGINT
    monkeypatch.undo()
    log = open(os.path.join(run, "f.log")).read()
    assert "Saved a checkpoint after step 2/3 of epoch 2" in log
    assert "Train: [  2/2] Final Prec@1" not in log
    # ... and the next --resume goes on at step 2 of epoch 2.
    assert train_final.main(resume) == 0
    log = open(os.path.join(run, "f.log")).read()
    assert "Resumed from" in log and "in epoch 2 at step 2" in log
    assert "Train: [  2/2] Final Prec@1" in log
    assert log.count("Train: [  1/") == 3  # epoch 1 ran once only
    assert log.count("Train: [  2/2] Step 000/002") == 1  # and steps 0-1 of epoch 2 once


def test_aux_head_and_cutout_on_mocked_mnist(tmp_path):
    with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
        code = train_final.main(
            [
                "--name",
                "m",
                "--dataset",
                "mnist",
                "--genotype",
                "MNIST",
                "--out_dir",
                str(tmp_path),
                "--epochs",
                "1",
                *TINY,
            ]
        )
    assert code == 0
    log = open(tmp_path / "m" / "m.log").read()
    assert "AUX_WEIGHT=0.4" in log and "CUTOUT_LENGTH=16" in log
    assert "Valid: [  1/1] Final Prec@1" in log


def test_imagenet_streams_from_the_host(tmp_path):
    with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
        code = train_final.main(
            [
                "--name",
                "i",
                "--dataset",
                "imagenet",
                "--genotype",
                "DARTS_V2",
                "--out_dir",
                str(tmp_path),
                "--epochs",
                "1",
                "--lr_schedule",
                "step",
                "--label_smoothing",
                "0.1",
                "--workers",
                "2",
                *TINY,
                "--batch_size",
                "2",
            ]
        )
    assert code == 0
    log = open(tmp_path / "i" / "i.log").read()
    assert "Epoch 0 LR 0.024250" in log  # 0.025 * 0.97: stepped at the epoch start
    assert "Valid: [  1/1] Step 001/001" in log  # 4 validation images, batch 2


def test_a_diverged_training_exits_1_with_the_message(tmp_path, monkeypatch, capsys):
    def diverge(cfg):
        raise reporting.Diverged("the training loss is inf at step 3 of epoch 9: ...")

    monkeypatch.setattr(final_loop, "run_final", diverge)
    args = [
        "--name",
        "d",
        "--dataset",
        "digits",
        "--genotype",
        "DARTS_V2",
        "--out_dir",
        str(tmp_path),
        *DIGITS_FINAL,
    ]
    assert train_final.main(args) == 1
    assert "error: the training loss is inf at step 3" in capsys.readouterr().err


def test_eval_only_without_checkpoint_exits_2(tmp_path, capsys):
    args = ["--name", "none", "--dataset", "digits", "--out_dir", str(tmp_path), "--eval_only"]
    assert train_final.main(args) == 2
    assert "no checkpoint folder" in capsys.readouterr().err


def test_missing_data_exits_2(tmp_path, capsys):
    args = ["--name", "c", "--dataset", "cifar10", "--genotype", "DARTS_V2"]
    assert train_final.main([*args, "--data_dir", str(tmp_path), "--out_dir", str(tmp_path)]) == 2
    assert "tfds build cifar10" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, message",
    [
        ([], "--genotype is required"),
        (["--genotype", "DARTS_V9"], "neither genotype text, an existing file, nor a name"),
        (["--genotype", "Genotype(normal=[[('conv_7x7', 0)]])"], "invalid genotype"),
        (["--genotype", "DARTS_V2", "--checkpoint", "x"], "--checkpoint is read only"),
        (["--genotype", "DARTS_V2", "--drop_path_prob", "1"], "--drop_path_prob must be"),
        (["--genotype", "DARTS_V2", "--lr", "-1"], "--lr must be > 0"),
        # Before any work (no run folder): digits' 8x8 images reach the head as 2x2.
        (
            ["--genotype", "DARTS_V2", "--layers", "5"],
            "needs features of at least 6x6, but digits's 8x8 images reach it as 2x2 "
            "(after cell 3); train without it: --aux_weight 0",
        ),
        (
            ["--genotype", "DARTS_V2", "--aux_weight", "0"],  # the default cutout, 16
            "--cutout_length 16 blanks the whole 8x8 digits image wherever the square is "
            "centred; use less than 16 (e.g. 4), or 0 for no cutout",
        ),
    ],
)
def test_bad_flags_give_one_clear_message(flags, message, capsys):
    with pytest.raises(SystemExit) as info:
        train_final.main(["--name", "b", "--dataset", "digits", *flags])
    assert info.value.code == 2
    assert message in capsys.readouterr().err
