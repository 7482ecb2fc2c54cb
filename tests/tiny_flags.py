"""Flags of the tiny search the end-to-end tests share (shared so compiles are cached)."""

SEARCH_TINY = [
    "--dataset",
    "digits",
    "--init_channels",
    "4",
    "--layers",
    "3",
    "--n_nodes",
    "2",
    "--batch_size",
    "8",
    "--steps_per_epoch",
    "3",
    "--print_freq",
    "2",
    "--progress",
    "false",
]
