"""DARTS architecture search (pt.darts's search.py flags): python train_search.py --help."""

import sys

from darts_jax import xla_env
from darts_jax.config import SearchConfig, UsageError, parse_args
from darts_jax.data import DataMissingError
from darts_jax.parallel import initialize_distributed


def main(argv=None) -> int:
    xla_env.configure()  # before the backend starts
    cfg = parse_args(argv, SearchConfig, "DARTS search with exact second-order alpha gradients")
    if cfg.distributed:
        initialize_distributed()  # before any computation
    xla_env.enable_compilation_cache()  # a resumed run loads its compiled steps
    from darts_jax.preemption import Stopped
    from darts_jax.reporting import Diverged
    from darts_jax.search_loop import run_search  # imports jax: after flag checks

    try:
        run_search(cfg)
    except (DataMissingError, FileExistsError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Stopped as e:  # SIGTERM or Ctrl-C, after saving
        print(f"stopped by {e}", file=sys.stderr)
        return e.exit_code
    except Diverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    xla_env.restart_with_hugepages()  # faster CPU steps (see darts_jax.xla_env)
    sys.exit(main())
