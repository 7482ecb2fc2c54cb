"""Typed search configuration: pt.darts's flags, names and defaults, plus ours."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re

from darts_jax import architect, data, genotypes
from darts_jax.final_model import aux_head_input_size, aux_head_min_size
from darts_jax.search_model import REMAT_MODES  # --remat's choices


class UsageError(ValueError):
    """Input the user can fix (devices, checkpoints to import): the scripts print it
    and exit with status 2."""


_GPUS_RE = re.compile(r"^(all|\d+(,\d+)*)$")


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """``python train_search.py`` flags. pt.darts's come first, with its defaults."""

    name: str
    dataset: str
    batch_size: int = 64
    w_lr: float = 0.025
    w_lr_min: float = 0.001
    w_momentum: float = 0.9
    w_weight_decay: float = 3e-4
    w_grad_clip: float = 5.0
    print_freq: int = 50
    gpus: str = "0"
    epochs: int = 50
    init_channels: int = 16
    layers: int = 8
    seed: int = 2
    workers: int = 4
    alpha_lr: float = 3e-4
    alpha_weight_decay: float = 1e-3
    # darts_jax additions
    alpha_grad: str = "second"
    remat: str = "auto"
    data_dir: str | None = None
    out_dir: str = "searchs"
    n_nodes: int = 4
    stem_multiplier: int = 3
    train_portion: float = 0.5
    steps_per_epoch: int = 0
    resume: bool = False
    checkpoint_minutes: float = 30.0
    progress: bool = True
    distributed: bool = False
    init_from: str | None = None
    init_layout: str = "ptdarts_search"

    def validate(self) -> SearchConfig:
        """Raises ValueError with one clear message for the first bad value."""
        _check_common(self)
        if self.init_layout not in ("ptdarts_search", "official_search"):
            raise ValueError(
                f"--init_layout must be ptdarts_search or official_search, got {self.init_layout!r}"
            )
        if self.init_from is not None and not os.path.isfile(self.init_from):
            raise ValueError(f"--init_from {self.init_from}: no such file")
        if data.dataset_info(self.dataset).streaming:
            raise ValueError(f"--dataset {self.dataset}: the search runs on CIFAR-size data sets")
        positive = (
            "batch_size",
            "print_freq",
            "epochs",
            "init_channels",
            "layers",
            "n_nodes",
            "stem_multiplier",
        )
        for field in positive:
            if getattr(self, field) < 1:
                raise ValueError(f"--{field} must be >= 1, got {getattr(self, field)}")
        for field in ("w_lr", "alpha_lr", "w_grad_clip"):
            if not getattr(self, field) > 0:
                raise ValueError(f"--{field} must be > 0, got {getattr(self, field)}")
        for field in (
            "w_lr_min",
            "w_weight_decay",
            "alpha_weight_decay",
            "workers",
            "steps_per_epoch",
        ):
            if getattr(self, field) < 0:
                raise ValueError(f"--{field} must be >= 0, got {getattr(self, field)}")
        if self.w_lr_min > self.w_lr:
            raise ValueError(f"--w_lr_min ({self.w_lr_min}) exceeds --w_lr ({self.w_lr})")
        if not 0 <= self.w_momentum < 1:
            raise ValueError(f"--w_momentum must be in [0, 1), got {self.w_momentum}")
        if self.alpha_grad not in architect.MODES:
            raise ValueError(
                f"--alpha_grad must be one of {architect.MODES}, got {self.alpha_grad!r}"
            )
        if self.remat not in REMAT_MODES:
            raise ValueError(f"--remat must be one of {REMAT_MODES}, got {self.remat!r}")
        if not 0 < self.train_portion < 1:
            raise ValueError(f"--train_portion must be in (0, 1), got {self.train_portion}")
        return self


@dataclasses.dataclass(frozen=True)
class FinalConfig:
    """``python train_final.py`` flags. pt.darts's augment.py flags first, with its defaults."""

    name: str
    dataset: str
    genotype: str | None = None  # required unless --eval_only reads it from the checkpoint
    batch_size: int = 96
    lr: float = 0.025
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    print_freq: int = 200
    gpus: str = "0"
    epochs: int = 600
    init_channels: int = 36
    layers: int = 20
    seed: int = 2
    workers: int = 4
    aux_weight: float = 0.4
    cutout_length: int = 16
    drop_path_prob: float = 0.2
    # darts_jax additions
    data_dir: str | None = None
    out_dir: str = "augments"
    stem_multiplier: int = 3
    label_smoothing: float = 0.0
    lr_schedule: str = "cosine"
    lr_gamma: float = 0.97
    steps_per_epoch: int = 0
    resume: bool = False
    checkpoint_minutes: float = 30.0
    eval_only: bool = False
    checkpoint: str | None = None
    torch_checkpoint: str | None = None
    torch_layout: str = "ptdarts_final"
    progress: bool = True
    distributed: bool = False

    def validate(self) -> FinalConfig:
        """Raises ValueError with one clear message for the first bad value."""
        _check_common(self)
        if self.genotype is None and not self.eval_only:
            raise ValueError("--genotype is required (text, a file holding it, or a name)")
        if self.genotype is not None:
            genotypes.resolve(self.genotype)  # raises ValueError naming the problem
        for field in ("batch_size", "print_freq", "epochs", "init_channels", "layers"):
            if getattr(self, field) < 1:
                raise ValueError(f"--{field} must be >= 1, got {getattr(self, field)}")
        for field in ("lr", "grad_clip"):
            if not getattr(self, field) > 0:
                raise ValueError(f"--{field} must be > 0, got {getattr(self, field)}")
        for field in ("weight_decay", "aux_weight", "cutout_length", "workers", "steps_per_epoch"):
            if getattr(self, field) < 0:
                raise ValueError(f"--{field} must be >= 0, got {getattr(self, field)}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"--momentum must be in [0, 1), got {self.momentum}")
        if not 0 <= self.drop_path_prob < 1:
            raise ValueError(f"--drop_path_prob must be in [0, 1), got {self.drop_path_prob}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"--label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.lr_schedule not in ("cosine", "step"):
            raise ValueError(f"--lr_schedule must be 'cosine' or 'step', got {self.lr_schedule!r}")
        if not 0 < self.lr_gamma <= 1:
            raise ValueError(f"--lr_gamma must be in (0, 1], got {self.lr_gamma}")
        if self.checkpoint is not None and not self.eval_only:
            raise ValueError("--checkpoint is read only with --eval_only")
        if self.torch_checkpoint is not None:
            if not self.eval_only or self.genotype is None:
                raise ValueError("--torch_checkpoint needs --eval_only and --genotype")
            if not os.path.isfile(self.torch_checkpoint):
                raise ValueError(f"--torch_checkpoint {self.torch_checkpoint}: no such file")
        if self.torch_layout not in ("ptdarts_final", "official_final"):
            raise ValueError(
                f"--torch_layout must be ptdarts_final or official_final, got {self.torch_layout!r}"
            )
        if not self.eval_only:  # --eval_only: the checkpoint's network, no augmentation
            self._check_image_size()
        return self

    def _check_image_size(self) -> None:
        """Checks what the data set's image size rules out: an auxiliary head the
        features reach too small (it reads them after cell 2 * layers // 3; digits'
        8x8 images arrive there as 2x2), and a cutout square that covers the whole
        image wherever it is centred (training on blank images)."""
        info = data.dataset_info(self.dataset)
        imagenet = info.name == "imagenet"
        size, smallest = (
            aux_head_input_size(info.size, self.layers, imagenet),
            aux_head_min_size(imagenet),
        )
        if self.aux_weight > 0 and size < smallest:
            raise ValueError(
                f"--aux_weight {self.aux_weight}: the auxiliary head needs features of at "
                f"least {smallest}x{smallest}, but {info.name}'s {info.size}x{info.size} "
                f"images reach it as {size}x{size} (after cell {2 * self.layers // 3}); "
                "train without it: --aux_weight 0"
            )
        if self.cutout_length // 2 >= info.size:  # augment.cutout's square: centre +- length // 2
            raise ValueError(
                f"--cutout_length {self.cutout_length} blanks the whole {info.size}x{info.size} "
                f"{info.name} image wherever the square is centred; use less than "
                f"{2 * info.size} (e.g. {info.size // 2}), or 0 for no cutout"
            )


def _check_common(cfg) -> None:
    """Checks shared by both scripts: run name, data set, --gpus, channels."""
    if not re.fullmatch(r"[\w.\-]+", cfg.name):
        raise ValueError(f"--name {cfg.name!r} must be letters, digits, '.', '-' or '_'")
    data.dataset_info(cfg.dataset)
    if not _GPUS_RE.match(cfg.gpus):
        raise ValueError(f"--gpus must be 'all' or a comma list like '0,1', got {cfg.gpus!r}")
    if cfg.init_channels % 2:
        raise ValueError(
            f"--init_channels must be even (FactorizedReduce), got {cfg.init_channels}"
        )
    if cfg.stem_multiplier < 1:
        raise ValueError(f"--stem_multiplier must be >= 1, got {cfg.stem_multiplier}")
    if not 0 <= cfg.seed < 2**32:  # numpy's seeds, as pt.darts's np.random.seed takes
        raise ValueError(f"--seed must be in [0, 2**32), got {cfg.seed}")
    if not cfg.checkpoint_minutes >= 0:
        raise ValueError(f"--checkpoint_minutes must be >= 0, got {cfg.checkpoint_minutes}")


_HELP = {
    "name": "run name: outputs go to <out_dir>/<name>/",
    "dataset": f"one of {sorted(data.DATASETS)} (digits is embedded, no download)",
    "alpha_grad": "alpha gradient: first order, exact second order, or corrected finite difference",
    "remat": "'cells': the cells before the last reduction cell keep only their inputs and "
    "are recomputed in every backward pass; 'hvp': the first stage's cells, inside the exact "
    "Hessian-vector product only (default config, second order, CPU: peak 10.2 GB, 'hvp' "
    "9.25 GB for a 0-13 %% slower step, 'cells' 5.9 GB for a 15 %% slower step); 'auto': "
    "'hvp' on the CPU where a first-stage state holds 2**18 or more elements per device "
    "(batch x H x W x C), else 'none'",
    "data_dir": "tensorflow-datasets data_dir holding prepared data",
    "steps_per_epoch": "cap on steps per epoch (0: the whole split)",
    "resume": "continue the run saved in <out_dir>/<name>/ (from the step after its last save)",
    "checkpoint_minutes": "inside an epoch, save a checkpoint every this many minutes (0: only "
    "at epoch ends); SIGTERM or Ctrl-C also saves after the current step, then stops",
    "progress": "show a progress bar per epoch",
    "distributed": "multi-host: call jax.distributed.initialize() (SLURM, TPU pods and Open MPI "
    "are detected; else set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)",
    "gpus": "devices: '0', '0,1,2,3' or 'all' (data parallel over them; the batch must "
    "divide by their number)",
    "workers": "host threads reading streamed data (ImageNet); on-device data sets need none",
    "genotype": "genotype text (pt.darts or official form), a file holding it, or a name "
    "(DARTS_V1, DARTS_V2, CIFAR10, MNIST, FASHIONMNIST)",
    "aux_weight": "weight of the auxiliary head's loss (0: no auxiliary head)",
    "cutout_length": "cutout square side after normalisation (0: off)",
    "drop_path_prob": "final drop-path probability, reached linearly over the epochs",
    "label_smoothing": "label smoothing of the cross-entropy (official ImageNet: 0.1)",
    "lr_schedule": "cosine (pt.darts, to 0) or step (official ImageNet: lr * lr_gamma per epoch)",
    "lr_gamma": "per-epoch decay of --lr_schedule step",
    "eval_only": "evaluate a checkpoint on the test split, no training",
    "checkpoint": "with --eval_only: checkpoint folder (default <out_dir>/<name>/best)",
    "torch_checkpoint": "with --eval_only: evaluate a PyTorch final-network checkpoint "
    "(.pt/.pth/.pth.tar) instead",
    "torch_layout": "its layout: ptdarts_final (pt.darts AugmentCNN) or official_final "
    "(official NetworkCIFAR)",
    "init_from": "start the search from a PyTorch search checkpoint (weights, BN statistics, "
    "alphas; fresh optimizers)",
    "init_layout": "its layout: ptdarts_search or official_search",
}


def _str2bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")


def build_parser(cls=SearchConfig, description: str = "") -> argparse.ArgumentParser:
    """An argparse parser with one flag per dataclass field, same names and defaults."""
    parser = argparse.ArgumentParser(description=description)
    for field in dataclasses.fields(cls):
        kwargs = {"help": _HELP.get(field.name, "")}
        if field.default is dataclasses.MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = field.default
            kwargs["help"] += f" (default: {field.default})"
        kind = {"int": int, "float": float, "bool": _str2bool}.get(str(field.type).split(" |")[0])
        if field.name == "alpha_grad":
            kwargs["choices"] = architect.MODES
        if field.name == "remat":
            kwargs["choices"] = REMAT_MODES
        if kind is bool or field.type == "bool":
            kwargs.update(type=_str2bool, nargs="?", const=True)
        elif kind is not None:
            kwargs["type"] = kind
        parser.add_argument(f"--{field.name}", **kwargs)
    return parser


def parse_args(argv=None, cls=SearchConfig, description: str = ""):
    """Parses and validates flags; bad values exit with one clear message (status 2)."""
    parser = build_parser(cls, description)
    args = parser.parse_args(argv)
    try:
        return cls(**vars(args)).validate()
    except ValueError as e:
        parser.error(str(e))
