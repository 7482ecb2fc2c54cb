import re

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


def test_network_shape_is_the_config_with_each_nonzero_size_in_its_place():
    assert bench.network_shape("search", "default") == bench.SEARCH_CONFIGS["default"]
    assert bench.network_shape("search", "default", batch=16, layers=0) == (16, 8, 16, 32, 3)
    assert bench.network_shape("final", "test", init_channels=8, image_size=64) == (
        8, 5, 8, 64, 3,
    )  # fmt: skip


@pytest.mark.parametrize(
    "net, config, sizes, message",
    [
        ("search", "default", {"batch": -1}, "--batch must be a positive size, or 0"),
        ("final", "quickstart", {}, "--config quickstart is not a final config: test, default"),
        ("search", "test", {"channels": 3}, "unknown sizes ['channels']"),
    ],
)
def test_network_shape_names_what_is_wrong(net, config, sizes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        bench.network_shape(net, config, **sizes)


def test_a_negative_size_flag_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--config", "default", "--layers", "-2"])
    assert exit_info.value.code == 2
    assert "--layers must be a positive size, or 0 for the config's; got -2" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--order", "first,third"],
            "--order: 'first,third' is not a comma list of first,second,fd",
        ),
        (["--steps", "-1"], "--steps must be >= 0 and --n_nodes >= 1, got -1, 4"),
    ],
)
def test_bad_orders_and_counts_stop_before_any_row(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(flags)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert message in captured.err and "framework" not in captured.out  # no row started
