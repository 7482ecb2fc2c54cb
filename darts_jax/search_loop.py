"""The search loop: epochs of jitted steps, validation, logging, plots, checkpoints.

Outputs in ``<out_dir>/<name>/``: ``<name>.log`` (pt.darts's lines), ``tb/``
(tensorboard), ``plots/`` (EPxx-normal/-reduce cell diagrams),
``checkpoints/`` (orbax, every epoch, every ``--checkpoint_minutes`` and on
SIGTERM / Ctrl-C inside an epoch; resumable at the next step) and, at the end,
``genotype.txt`` with the best validation epoch's genotype.
"""

from __future__ import annotations

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
    optim,
    parallel,
    plot,
    preemption,
    reporting,
    runs,
)
from darts_jax.config import SearchConfig, UsageError
from darts_jax.metrics import masked_sums
from darts_jax.search_model import (
    SearchNetwork,
    count_params,
    hvp_remat_cells_for,
    remat_cells_for,
    resolve_remat,
)
from darts_jax.search_step import Hyper, create_state, make_train_step


def make_masked_eval(model, augment_fn, par):
    """Jitted ``(state, images, labels, idx, mask, rng) -> sums`` on device-resident data."""

    def fn(state, images_all, labels_all, idx, mask, rng):
        images, labels = images_all[idx], labels_all[idx]
        logits = model.apply(
            {"params": state.params, "batch_stats": state.batch_stats},
            augment_fn(rng, images),
            state.alphas,
            train=False,
        )
        return masked_sums(logits, labels, mask)

    return runs.jit_eval(fn, par)


def import_torch_search(cfg: SearchConfig, model, state, w_tx, a_tx):
    """The state with a PyTorch search checkpoint's weights, BN statistics and
    alphas, and fresh optimizers (the checkpoint holds none)."""
    from darts_jax.interop import convert  # torch only here

    try:
        imported, variables, alphas = convert.from_torch(cfg.init_from, cfg.init_layout)
    except (ValueError, NotImplementedError) as e:
        raise UsageError(f"--init_from {cfg.init_from}: {e}") from e
    fields = ("C", "num_classes", "layers", "n_nodes", "stem_multiplier")
    differ = [
        f"{f} {getattr(imported, f)} (flags: {getattr(model, f)})"
        for f in fields
        if getattr(imported, f) != getattr(model, f)
    ]
    if differ:
        raise UsageError(f"{cfg.init_from} does not match the flags: {', '.join(differ)}")
    cast = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.asarray(n, o.dtype), new, old)  # noqa: E731
    params = cast(variables["params"], state.params)
    alphas = cast(alphas, state.alphas)
    return state._replace(
        params=params,
        batch_stats=cast(variables["batch_stats"], state.batch_stats),
        alphas=alphas,
        w_opt_state=w_tx.init(params),
        a_opt_state=a_tx.init(alphas),
    )


def run_remat(cfg: SearchConfig, image_size: int, par: parallel.Parallel) -> str:
    """The --remat mode this run uses: "auto" resolved for its devices and sizes."""
    devices = list(par.mesh.devices.flat)
    return resolve_remat(cfg.remat, devices, cfg.batch_size, image_size, cfg.init_channels)


def build_model(cfg: SearchConfig, num_classes: int, remat: str) -> SearchNetwork:
    """The supernet the flags describe (``remat``: ``run_remat``'s mode)."""
    return SearchNetwork(
        cfg.init_channels,
        num_classes,
        cfg.layers,
        cfg.n_nodes,
        cfg.stem_multiplier,
        remat_cells=remat_cells_for(remat, cfg.layers),
    )


def build_hyper(cfg: SearchConfig, remat: str) -> Hyper:
    """The search step's static settings the flags describe (``remat``: ``run_remat``'s mode)."""
    return Hyper(
        cfg.alpha_grad,
        cfg.w_momentum,
        cfg.w_weight_decay,
        hvp_remat_cells=hvp_remat_cells_for(remat, cfg.layers),
    )


def run_search(cfg: SearchConfig) -> genotypes.Genotype:
    """Runs (or resumes) a search and returns the best epoch's genotype. A stop
    request (SIGTERM, Ctrl-C) saves after the current step and raises
    ``preemption.Stopped``; the log, tensorboard and checkpoints close on every exit."""
    out = os.path.join(cfg.out_dir, cfg.name)
    logger, tb, par = runs.open_run(out, cfg.name, cfg.resume, cfg, "search")
    try:
        with (
            checkpoint.Checkpoints(os.path.join(out, "checkpoints")) as ckpts,
            preemption.SaveTriggers(cfg.checkpoint_minutes) as triggers,
        ):
            return _search(cfg, out, logger, tb, par, ckpts, triggers)
    finally:
        tb.close()
        runs.close_logger(logger)


def _search(cfg, out, logger, tb, par, ckpts, triggers) -> genotypes.Genotype:
    dataset = data.load(cfg.dataset, cfg.data_dir)
    info = dataset.info
    w_idx, a_idx = data.search_split(len(dataset.train_labels), cfg.train_portion)
    split = f"(--train_portion {cfg.train_portion} of {len(dataset.train_labels)})"
    steps = runs.epoch_steps(
        len(w_idx), cfg.batch_size, cfg.steps_per_epoch, f"weight-split images {split}"
    )
    runs.epoch_steps(len(a_idx), cfg.batch_size, 0, f"alpha-split images {split}")

    remat = run_remat(cfg, info.size, par)
    model = build_model(cfg, info.num_classes, remat)
    schedule = optim.epoch_cosine_schedule(cfg.w_lr, cfg.w_lr_min, cfg.epochs, steps)
    w_tx = optim.weight_optimizer(schedule, cfg.w_momentum, cfg.w_weight_decay, cfg.w_grad_clip)
    a_tx = optim.alpha_optimizer(cfg.alpha_lr, cfg.alpha_weight_decay)
    input_shape = (cfg.batch_size, info.size, info.size, info.channels)
    state = create_state(model, jax.random.PRNGKey(cfg.seed), input_shape, w_tx, a_tx)
    if cfg.init_from is not None:
        state = import_torch_search(cfg, model, state, w_tx, a_tx)
        logger.info(f"Initialised from {cfg.init_from} ({cfg.init_layout})")
    runs.release_init_memory()  # the eager init's programs, before the step compiles
    state = parallel.put(state, par.replicated)
    hyper = build_hyper(cfg, remat)
    logger.info(
        f"Search network: {count_params(state.params) / 1e6:.3f} M weights, "
        f"alpha gradient: {cfg.alpha_grad}, remat: {remat}"
        + (" (--remat auto)" if cfg.remat == "auto" else "")
        + (f", cells {list(model.remat_cells)} rematerialised" if model.remat_cells else "")
        + (
            f", cells {list(hyper.hvp_remat_cells)} rematerialised in the Hessian-vector product"
            if hyper.hvp_remat_cells != model.remat_cells and cfg.alpha_grad == "second"
            else ""
        )
    )

    flags = runs.run_flags(cfg)  # kept in every checkpoint
    start_epoch, first_step, totals, best_top1, best_genotype = 0, 0, None, -1.0, None
    if cfg.resume and ckpts.latest_step() is not None:
        state, meta = ckpts.restore(state)
        start_epoch, first_step, totals = runs.resume_point(meta, steps)
        best_top1 = meta["best_top1"]
        if meta["best_genotype"] is not None:
            best_genotype = genotypes.from_str(meta["best_genotype"])
        runs.log_resumed(logger, meta, flags, ckpts.directory, start_epoch, first_step)
    elif cfg.resume:  # e.g. a scheduler's job script that always passes --resume
        logger.info(f"--resume: no checkpoint under {ckpts.directory} yet, starting a new search")

    state = parallel.put(state, par.replicated)  # the compiled step's input sharding
    train_aug = augment.make_augment(info, train=True)
    train_step = jax.jit(
        make_train_step(
            model,
            w_tx,
            a_tx,
            schedule,
            train_aug,
            hyper,
        ),
        in_shardings=(par.replicated, par.data),
        out_shardings=(par.replicated, par.replicated),
        donate_argnums=0,
    )
    train_step = runs.compile_on_first_call(train_step, logger, "search step")
    # pt.darts validates on the alpha half through the same (augmented) loader.
    eval_fn = make_masked_eval(model, train_aug, par)
    gather = runs.jit_gather(par)
    images_dev, labels_dev = parallel.put(
        (dataset.train_images, dataset.train_labels), par.replicated
    )
    eval_rng = jax.random.PRNGKey(cfg.seed + 1)

    def search_batches(w_batches, a_batches):
        for w_batch, a_batch in zip(w_batches, a_batches, strict=True):
            ti, tl = gather(images_dev, labels_dev, runs.put_indices(par, w_batch))
            vi, vl = gather(images_dev, labels_dev, runs.put_indices(par, a_batch))
            yield {"train_images": ti, "train_labels": tl, "val_images": vi, "val_labels": vl}

    def run_meta() -> dict:
        best = best_genotype and genotypes.to_str(best_genotype)
        return {"best_top1": best_top1, "best_genotype": best, "flags": flags}

    for epoch in range(start_epoch, cfg.epochs):
        w_batches = data.epoch_batches(w_idx, cfg.batch_size, cfg.seed, epoch, 0)[:steps]
        a_batches = data.epoch_batches(a_idx, cfg.batch_size, cfg.seed, epoch, 1)
        a_batches = np.resize(a_batches, (steps, cfg.batch_size))  # cycle if the halves differ
        logger.info(f"Epoch {epoch} LR {float(schedule(epoch * steps)):.6f}")
        meter = reporting.EpochMeter(
            logger,
            tb,
            epoch,
            cfg.epochs,
            steps,
            progress=cfg.progress,
            desc="search",
            done=first_step,
            totals=totals,
        )

        def save_mid_epoch(state, steps_done, epoch=epoch, meter=meter):
            meta = {"epoch": epoch, "steps_done": steps_done, "steps_per_epoch": steps}
            ckpts.save(state, {**meta, "train_totals": meter.totals, **run_meta()})
            logger.info(f"Saved a checkpoint after step {steps_done}/{steps} of epoch {epoch + 1}")

        t0 = time.time()
        batches = search_batches(w_batches[first_step:], a_batches[first_step:])
        state = runs.run_steps(
            train_step, state, batches, first_step, meter, cfg.print_freq, triggers, save_mid_epoch
        )
        meter.close()
        cur_step = (epoch + 1) * steps
        tb.scalar("train/lr", float(schedule(epoch * steps)), cur_step)
        logger.info(reporting.final_line("Train", epoch, cfg.epochs, meter.averages()["top1"]))
        logger.info(f"Epoch time {time.time() - t0:.1f} s ({steps - first_step} steps)")
        first_step, totals = 0, None

        val = runs.evaluate(
            eval_fn,
            state,
            len(a_idx),
            cfg.batch_size,
            jax.random.fold_in(eval_rng, epoch),
            runs.resident(par, images_dev, labels_dev, a_idx.astype(np.int32)),
            par,
        )
        reporting.log_validation(logger, tb, val, epoch, cfg.epochs, cur_step)

        alphas = parallel.to_host(state.alphas)
        reporting.log_alphas(logger, alphas, cfg.n_nodes)
        genotype = genotypes.derive(alphas)
        logger.info(f"genotype = {genotypes.to_str(genotype)}")
        if parallel.is_main_process():
            plot.plot_genotype(
                genotype, os.path.join(out, "plots", f"EP{epoch + 1:02d}"), f"Epoch {epoch + 1}"
            )
        if val["top1"] > best_top1:
            best_top1, best_genotype = val["top1"], genotype
        ckpts.save(state, {"epoch": epoch, "genotype": genotypes.to_str(genotype), **run_meta()})
        triggers.saved()
        logger.info("")
        if triggers.stop_requested() and epoch + 1 < cfg.epochs:
            raise triggers.stopped(f"after epoch {epoch + 1}")

    if best_genotype is None:
        raise RuntimeError("no epoch was run: --epochs is already reached by the checkpoint")
    logger.info(f"Final best Prec@1 = {best_top1:.4%}")
    logger.info(f"Best Genotype = {genotypes.to_str(best_genotype)}")
    if parallel.is_main_process():
        with open(os.path.join(out, "genotype.txt"), "w") as f:
            f.write(genotypes.to_str(best_genotype) + "\n")
        plot.plot_genotype(best_genotype, os.path.join(out, "plots", "best"), "Best")
    return best_genotype
