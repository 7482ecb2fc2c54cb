"""Train a found cell from scratch (pt.darts's augment.py flags): python train_final.py --help."""

import sys

from darts_jax import xla_env
from darts_jax.config import FinalConfig, parse_args


def main(argv=None) -> int:
    xla_env.configure(program="final")  # before the backend starts
    cfg = parse_args(argv, FinalConfig, "DARTS final training of a genotype from scratch")
    xla_env.enable_compilation_cache()  # a resumed run loads its compiled steps
    from darts_jax import runs  # imports jax: after flag checks
    from darts_jax.final_loop import run_final

    return runs.exit_status(run_final, cfg, (*runs.USER_ERRORS, FileNotFoundError))


if __name__ == "__main__":
    xla_env.restart_with_hugepages()  # faster CPU steps (see darts_jax.xla_env)
    sys.exit(main())
