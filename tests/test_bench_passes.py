import argparse
import json
import subprocess
import sys

import pytest

from darts_jax import bench_passes


def test_pass_list_accepts_known_names_and_names_the_unknown_ones():
    assert bench_passes._passes("gradient, hvp") == ["gradient", "hvp"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown pass hessian; choose from"):
        bench_passes._passes("gradient,hessian")
    with pytest.raises(argparse.ArgumentTypeError, match="unknown pass ','"):
        bench_passes._passes(",")


def test_bad_flags_exit_with_one_message(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_passes.main(["--reps", "0"])
    assert exit_info.value.code == 2
    assert "--reps must be at least 1, got 0" in capsys.readouterr().err


def test_jax_row_times_a_compiled_pass_and_reports_its_plan(tmp_path):
    # As a user runs it: the parent prints the table, a child process times the pass.
    out = tmp_path / "rows.jsonl"
    cmd = [sys.executable, "-m", "darts_jax.bench_passes", "--passes", "forward"]
    proc = subprocess.run(
        [*cmd, "--reps", "2", "--json", str(out)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "jax       test     forward " in proc.stdout
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["framework"] == "jax" and row["pass"] == "forward"
    assert 0 < row["pass_s_min"] <= row["pass_s_max"]
    assert row["trace_compile_s"] > 0 and row["planned_gb"] is not None


@pytest.mark.usefixtures("torch_one_thread")
@pytest.mark.parametrize("kind", ["weight_gradient", "hvp"])
def test_torch_row_times_the_reference_pass(kind):
    from darts_jax.interop import torch_passes

    row = torch_passes.pass_row("test", kind, reps=1)
    assert row["framework"] == "torch" and row["pass"] == kind
    assert 0 < row["pass_s_min"] == row["pass_s_max"]
