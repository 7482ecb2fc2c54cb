import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax.checkpoint import Checkpoints
from darts_jax.config import UsageError


def _state(edges_name="node_edges", n=3):
    return {
        "params": {edges_name: jnp.arange(n, dtype=jnp.float32)},
        "step": jnp.zeros((), "int32"),
    }


def test_round_trip_and_meta(tmp_path):
    ckpts = Checkpoints(str(tmp_path / "c"))
    ckpts.save(4, _state(), {"epoch": 4})
    state, meta = ckpts.restore(_state(n=3))
    np.testing.assert_array_equal(state["params"]["node_edges"], [0, 1, 2])
    assert meta == {"epoch": 4} and ckpts.read_meta() == {"epoch": 4}


@pytest.mark.parametrize("target", [_state("node0_edges"), _state(n=4)])
def test_a_checkpoint_of_another_layout_or_shape_is_one_clear_error(tmp_path, target):
    ckpts = Checkpoints(str(tmp_path / "c"))
    ckpts.save(1, _state(), {"epoch": 1})
    with pytest.raises(UsageError, match="does not fit this run's state.*another --name"):
        ckpts.restore(target)


def test_no_checkpoint_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Checkpoints(str(tmp_path / "empty")).restore(_state())
