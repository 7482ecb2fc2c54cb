import jax
import jax.numpy as jnp
import pytest

from darts_jax import bench


def test_planned_memory_counts_arguments_outputs_and_temporaries():
    x = jax.ShapeDtypeStruct((4096, 4096), jnp.float32)  # 0.067 GB, never allocated
    compiled = jax.jit(lambda x: (x @ x.T).sum(0)).lower(x).compile()
    planned = bench._planned_memory_gb(compiled)
    assert planned is not None and 0.067 <= planned < 1.0


def test_compile_only_rows_print_dashes_in_their_columns():
    assert bench._fmt(None, "9.4f") == " " * 8 + "-"
    assert bench._fmt(1.5, "9.4f") == "   1.5000"


def test_config_must_exist_for_the_net(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--net", "final", "--config", "quickstart"])
    assert exit_info.value.code == 2
    assert "--config quickstart is not a final config: test, default" in capsys.readouterr().err


def test_host_memory_sees_a_new_resident_array():
    import numpy as np

    peak_before, rss_before = bench._host_memory_gb()
    block = np.ones(50_000_000, np.float32)  # 0.2 GB, touched
    peak_after, rss_after = bench._host_memory_gb()
    assert rss_before is not None and rss_after - rss_before > 0.15
    assert peak_after >= rss_after - 0.01 and peak_after >= peak_before
    del block
