"""Train a found cell from scratch (pt.darts's augment.py flags): python train_final.py --help."""

import sys

from darts_jax import xla_env
from darts_jax.config import FinalConfig, UsageError, parse_args
from darts_jax.data import DataMissingError
from darts_jax.parallel import initialize_distributed


def main(argv=None) -> int:
    xla_env.configure()  # before the backend starts
    cfg = parse_args(argv, FinalConfig, "DARTS final training of a genotype from scratch")
    if cfg.distributed:
        initialize_distributed()  # before any computation
    xla_env.enable_compilation_cache()  # a resumed run loads its compiled steps
    from darts_jax.final_loop import run_final  # imports jax: after flag checks
    from darts_jax.preemption import Stopped
    from darts_jax.reporting import Diverged

    try:
        run_final(cfg)
    except (DataMissingError, FileExistsError, FileNotFoundError, UsageError) as e:
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
