"""Final training of a found cell from scratch (pt.darts's augment.py), and evaluation.

Outputs in ``<out_dir>/<name>/``: ``<name>.log`` (pt.darts's lines), ``tb/``
(tensorboard), ``plots/`` (the cell), ``checkpoints/`` (orbax, the last epoch
or the last save inside one: every ``--checkpoint_minutes`` and on SIGTERM /
Ctrl-C; resumable at the next step) and ``best/`` (orbax, the best test
epoch). pt.darts reports the test split as "Valid"; so do we.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from darts_jax import (
    augment,
    checkpoint,
    data,
    genotypes,
    host_data,
    optim,
    parallel,
    plot,
    preemption,
    reporting,
    runs,
)
from darts_jax.config import FinalConfig, UsageError
from darts_jax.final_model import FinalNetwork, count_params_excluding_aux
from darts_jax.final_step import (
    FinalHyper,
    FinalState,
    create_state,
    make_eval_step,
    make_train_step,
)

MODEL_FIELDS = ("init_channels", "layers", "aux_weight", "stem_multiplier")
WIDTH = 3  # augment.py prints the epoch in width 3 (600 epochs)


def build(cfg: FinalConfig, genotype: genotypes.Genotype, info: data.DatasetInfo, steps: int):
    """The network, optimizer, schedule and initial state of a final training."""
    model = FinalNetwork(
        genotype,
        C=cfg.init_channels,
        num_classes=info.num_classes,
        layers=cfg.layers,
        auxiliary=cfg.aux_weight > 0,
        stem_multiplier=cfg.stem_multiplier,
        imagenet=info.name == "imagenet",
    )
    if cfg.lr_schedule == "step":  # the official ImageNet script
        schedule = optim.epoch_step_schedule(cfg.lr, cfg.lr_gamma, steps)
    else:  # augment.py: CosineAnnealingLR(optimizer, epochs), to 0, stepped per epoch
        schedule = optim.epoch_cosine_schedule(cfg.lr, 0.0, cfg.epochs, steps)
    tx = optim.weight_optimizer(schedule, cfg.momentum, cfg.weight_decay, cfg.grad_clip)
    input_shape = (1, info.size, info.size, info.channels)
    state = create_state(model, jax.random.PRNGKey(cfg.seed), input_shape, tx)
    runs.release_init_memory()  # the eager init's programs, before the step compiles
    return model, tx, schedule, state


class Splits:
    """A data set's train and test splits, on the device (CIFAR-size sets) or read
    batch by batch on the host (ImageNet: ``info.streaming``)."""

    def __init__(self, cfg: FinalConfig, par: parallel.Parallel, need_train: bool = True):
        self.info, self.par = data.dataset_info(cfg.dataset), par
        if self.info.streaming:
            split = lambda name: host_data.HostSplit(self.info, name, cfg.data_dir, cfg.workers)
            self.train = split("train") if need_train else None
            self.test = split(self.info.test_split)
            self.n_train = len(self.train) if need_train else 0
            self.n_test = len(self.test)
        else:
            ds = data.load(cfg.dataset, cfg.data_dir)
            self.train = parallel.put((ds.train_images, ds.train_labels), par.replicated)
            self.test = parallel.put((ds.test_images, ds.test_labels), par.replicated)
            self.n_train, self.n_test = len(ds.train_labels), len(ds.test_labels)
            self._gather = runs.jit_gather(par)

    def train_batches(self, batch_indices: np.ndarray, seed: tuple):
        """Training batches {'images', 'labels'} on the device, in order."""
        if self.info.streaming:
            # Each process reads and decodes only its own part of every batch.
            local = parallel.process_slice(batch_indices, self.par)
            for batch in self.train.batches(local, True, seed):
                yield parallel.put_local(batch, self.par.data)
        else:
            for idx in batch_indices:
                images, labels = self._gather(*self.train, runs.put_indices(self.par, idx))
                yield {"images": images, "labels": labels}

    def evaluate(self, eval_fn, state, batch_size: int) -> dict:
        """Loss, top-1, top-5 over the test split."""
        par = self.par
        if self.info.streaming:
            arange = runs.put_indices(par, np.arange(batch_size))

            def fetch(padded):
                for batch in self.test.batches(parallel.process_slice(padded, par), False):
                    batch = parallel.put_local(batch, par.data)
                    yield batch["images"], batch["labels"], arange

        else:
            fetch = runs.resident(par, *self.test)
        rng = jax.random.PRNGKey(0)
        return runs.evaluate(eval_fn, state, self.n_test, batch_size, rng, fetch, par)


def model_size_line(params) -> str:
    """augment.py's "Model size = x MB" line (millions of weights, aux head excluded)."""
    return f"Model size = {count_params_excluding_aux(params) / 1e6:.3f} MB"


def run_eval_only(cfg: FinalConfig) -> dict:
    """Evaluates a saved checkpoint (default: the run's best, or a PyTorch
    checkpoint with --torch_checkpoint) on the test split."""
    if cfg.torch_checkpoint is not None:
        return _eval_torch_checkpoint(cfg)
    directory = cfg.checkpoint or os.path.join(cfg.out_dir, cfg.name, "best")
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"no checkpoint folder {directory}; train first or pass --checkpoint"
        )
    with checkpoint.Checkpoints(directory) as ckpts:
        meta = ckpts.read_meta()
        # The network's shape comes from the checkpoint, so only --name/--dataset are needed.
        cfg = dataclasses.replace(cfg, **meta.get("model", {}))
        genotype = genotypes.resolve(meta["genotype"])
        if cfg.genotype is not None and genotypes.resolve(cfg.genotype) != genotype:
            raise UsageError(
                f"--genotype differs from the one {directory} was trained with: "
                f"{genotypes.to_str(genotype)} (leave --genotype out to use it)"
            )
        par = parallel.setup(cfg.gpus, cfg.batch_size)
        splits = Splits(cfg, par, need_train=False)
        model, _, _, state = build(cfg, genotype, splits.info, 1)
        state, meta = ckpts.restore(parallel.put(state, par.replicated))
    return _report_test(
        model, state, splits, cfg.batch_size, f"{directory} (epoch {meta['epoch'] + 1})"
    )


def _report_test(model, state, splits: Splits, batch_size: int, label: str) -> dict:
    """Evaluates ``state`` on the test split and prints one line headed ``label``."""
    eval_fn = make_eval_step(model, augment.make_augment(splits.info, train=False), splits.par)
    val = splits.evaluate(eval_fn, state, batch_size)
    print(f"{label}: test loss {val['loss']:.4f} Prec@1 {val['top1']:.4%} Prec@5 {val['top5']:.4%}")
    return val


def _eval_torch_checkpoint(cfg: FinalConfig) -> dict:
    from darts_jax.interop import convert  # torch only here

    try:
        model, variables, _ = convert.from_torch(
            cfg.torch_checkpoint, cfg.torch_layout, genotype=cfg.genotype
        )
    except (ValueError, NotImplementedError) as e:
        raise UsageError(f"--torch_checkpoint {cfg.torch_checkpoint}: {e}") from e
    par = parallel.setup(cfg.gpus, cfg.batch_size)
    splits = Splits(cfg, par, need_train=False)
    if model.num_classes != splits.info.num_classes:
        raise UsageError(
            f"{cfg.torch_checkpoint} has {model.num_classes} classes, "
            f"{splits.info.name} has {splits.info.num_classes}"
        )
    model = dataclasses.replace(model, imagenet=splits.info.name == "imagenet")
    state = FinalState(
        jnp.zeros((), jnp.int32), variables["params"], variables["batch_stats"], None, None
    )
    state = parallel.put(state, par.replicated)
    label = f"{cfg.torch_checkpoint} ({cfg.torch_layout}, {model.C} channels, {model.layers} cells)"
    return _report_test(model, state, splits, cfg.batch_size, label)


def run_final(cfg: FinalConfig) -> float:
    """Trains (or resumes) the final network; returns the best test top-1. A stop
    request (SIGTERM, Ctrl-C) saves after the current step and raises
    ``preemption.Stopped``; the log, tensorboard and checkpoints close on every exit."""
    if cfg.eval_only:
        return run_eval_only(cfg)["top1"]
    out = os.path.join(cfg.out_dir, cfg.name)
    logger, tb, par = runs.open_run(out, cfg.name, cfg.resume, cfg, "final training")
    try:
        with (
            checkpoint.Checkpoints(os.path.join(out, "checkpoints"), max_to_keep=1) as last,
            checkpoint.Checkpoints(os.path.join(out, "best"), max_to_keep=1) as best,
            preemption.SaveTriggers(cfg.checkpoint_minutes) as triggers,
        ):
            return _train(cfg, out, logger, tb, par, last, best, triggers)
    finally:
        tb.close()
        runs.close_logger(logger)


def _train(cfg, out, logger, tb, par, last, best, triggers) -> float:
    genotype = genotypes.resolve(cfg.genotype)
    logger.info(f"genotype = {genotypes.to_str(genotype)}")
    if parallel.is_main_process():
        plot.plot_genotype(genotype, os.path.join(out, "plots", "cell"), cfg.name)

    splits = Splits(cfg, par)
    info, n_train = splits.info, splits.n_train
    steps = runs.epoch_steps(n_train, cfg.batch_size, cfg.steps_per_epoch, "training images")
    model, tx, schedule, state = build(cfg, genotype, info, steps)
    logger.info(model_size_line(state.params))
    state = parallel.put(state, par.replicated)

    flags = runs.run_flags(cfg)  # kept in every checkpoint (reads --genotype once, here)
    start_epoch, first_step, totals, best_top1 = 0, 0, None, -1.0
    if cfg.resume and last.latest_step() is not None:
        state, meta = last.restore(state)
        start_epoch, first_step, totals = runs.resume_point(meta, steps)
        best_top1 = meta["best_top1"]
        runs.log_resumed(logger, meta, flags, f"{out}/checkpoints", start_epoch, first_step)
    elif cfg.resume:  # e.g. a scheduler's job script that always passes --resume
        logger.info(f"--resume: no checkpoint under {out}/checkpoints yet, starting a new training")

    hyper = FinalHyper(steps, cfg.epochs, cfg.drop_path_prob, cfg.aux_weight, cfg.label_smoothing)
    train_aug = augment.make_augment(info, train=True, cutout_length=cfg.cutout_length)
    state = parallel.put(state, par.replicated)  # the compiled step's input sharding
    train_step = jax.jit(
        make_train_step(model, tx, schedule, train_aug, hyper),
        in_shardings=(par.replicated, par.data),
        out_shardings=(par.replicated, par.replicated),
        donate_argnums=0,
    )
    train_step = runs.compile_on_first_call(train_step, logger, "training step")
    eval_fn = make_eval_step(model, augment.make_augment(info, train=False), par)

    def run_meta(epoch: int) -> dict:
        return {
            "epoch": epoch,
            "best_top1": best_top1,
            "genotype": genotypes.to_str(genotype),
            "model": {k: getattr(cfg, k) for k in MODEL_FIELDS},
            "flags": flags,
        }

    for epoch in range(start_epoch, cfg.epochs):
        batches = data.epoch_batches(
            np.arange(n_train, dtype=np.int32), cfg.batch_size, cfg.seed, epoch, 2
        )
        batches = batches[:steps]
        lr = float(schedule(epoch * steps))
        drop_prob = cfg.drop_path_prob * epoch / cfg.epochs
        logger.info(f"Epoch {epoch} LR {lr:.6f} drop path {drop_prob:.4f}")
        meter = reporting.EpochMeter(
            logger,
            tb,
            epoch,
            cfg.epochs,
            steps,
            WIDTH,
            cfg.progress,
            "train",
            done=first_step,
            totals=totals,
        )

        def save_mid_epoch(state, steps_done, epoch=epoch, meter=meter):
            mid = {"steps_done": steps_done, "steps_per_epoch": steps, "train_totals": meter.totals}
            last.save(state, {**run_meta(epoch), **mid})
            logger.info(f"Saved a checkpoint after step {steps_done}/{steps} of epoch {epoch + 1}")

        t0 = time.time()
        state = runs.run_steps(
            train_step,
            state,
            splits.train_batches(batches[first_step:], (cfg.seed, epoch)),
            first_step,
            meter,
            cfg.print_freq,
            triggers,
            save_mid_epoch,
        )
        meter.close()
        cur_step = (epoch + 1) * steps
        tb.scalar("train/lr", lr, cur_step)
        logger.info(
            reporting.final_line("Train", epoch, cfg.epochs, meter.averages()["top1"], WIDTH)
        )
        logger.info(f"Epoch time {time.time() - t0:.1f} s ({steps - first_step} steps)")
        first_step, totals = 0, None

        val = splits.evaluate(eval_fn, state, cfg.batch_size)
        reporting.log_validation(logger, tb, val, epoch, cfg.epochs, cur_step, WIDTH)
        is_best = val["top1"] > best_top1
        best_top1 = max(best_top1, val["top1"])
        meta = {**run_meta(epoch), "top1": val["top1"]}
        if is_best:
            best.save(state, meta)
        last.save(state, meta)
        triggers.saved()
        logger.info("")
        if triggers.stop_requested() and epoch + 1 < cfg.epochs:
            raise triggers.stopped(f"after epoch {epoch + 1}")

    logger.info(f"Final best Prec@1 = {best_top1:.4%}")
    return best_top1
