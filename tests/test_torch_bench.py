"""The PyTorch step timing (darts_jax.interop.torch_bench): darts_jax.bench's configs and sizes."""

import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("torch_one_thread")

from darts_jax.interop import torch_bench  # noqa: E402


def test_a_size_flag_changes_the_timed_network():
    # quickstart (C 8, 5 cells, batch 32, 8x8 single-channel digits) was missing here,
    # so `bench --config quickstart --torch` failed in its PyTorch row.
    flags = "--net search --config quickstart --batch 2 --layers 3 --steps 1"
    row = torch_bench.main(flags.split())
    assert (row["C"], row["layers"], row["batch"], row["size"]) == (8, 3, 2, 8)
    assert row["step_s"] > 0 and row["images_per_s"] == pytest.approx(4 / row["step_s"], rel=0.02)


def test_a_config_of_the_other_net_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        torch_bench.main(["--net", "final", "--config", "quickstart"])
    assert exit_info.value.code == 2
    assert "--config quickstart is not a final config" in capsys.readouterr().err
