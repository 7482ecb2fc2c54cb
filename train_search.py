"""DARTS architecture search (pt.darts's search.py flags): python train_search.py --help."""

import sys

from darts_jax import xla_env
from darts_jax.config import SearchConfig, parse_args


def main(argv=None) -> int:
    xla_env.configure()  # before the backend starts
    cfg = parse_args(argv, SearchConfig, "DARTS search with exact second-order alpha gradients")
    xla_env.enable_compilation_cache()  # a resumed run loads its compiled steps
    from darts_jax import runs  # imports jax: after flag checks
    from darts_jax.search_loop import run_search

    return runs.exit_status(run_search, cfg)


if __name__ == "__main__":
    xla_env.restart_with_hugepages()  # faster CPU steps (see darts_jax.xla_env)
    sys.exit(main())
