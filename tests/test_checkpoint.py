import gc

import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax.checkpoint import Checkpoints
from darts_jax.config import UsageError

# orbax's failed read of a wrongly shaped array leaves a callback on its closed
# event loop, which Python reports as an unraisable exception (not ours to fix);
# the test that provokes it runs last here.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _state(edges_name="node_edges", n=3):
    return {
        "params": {edges_name: jnp.arange(n, dtype=jnp.float32)},
        "step": jnp.zeros((), "int32"),
    }


@pytest.fixture
def ckpts(tmp_path):
    manager = Checkpoints(str(tmp_path / "c"))
    yield manager
    manager.close()  # stops orbax's background threads before the next test
    gc.collect()  # and reports what they left while this test's warning filters apply


def test_round_trip_and_meta(ckpts):
    ckpts.save(4, _state(), {"epoch": 4})
    state, meta = ckpts.restore(_state(n=3))
    np.testing.assert_array_equal(state["params"]["node_edges"], [0, 1, 2])
    assert meta == {"epoch": 4} and ckpts.read_meta() == {"epoch": 4}


def test_no_checkpoint_is_file_not_found(ckpts):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ckpts.restore(_state())


@pytest.mark.parametrize("target", [_state("node0_edges"), _state(n=4)])
def test_a_checkpoint_of_another_layout_or_shape_is_one_clear_error(ckpts, target):
    ckpts.save(1, _state(), {"epoch": 1})
    with pytest.raises(UsageError, match="does not fit this run's state.*another --name"):
        ckpts.restore(target)
