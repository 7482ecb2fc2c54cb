"""Flags of the tiny runs the end-to-end tests share (shared so compiles are cached)."""

# Network size, batch and epoch length both scripts take.
TINY = [
    "--init_channels",
    "4",
    "--layers",
    "3",
    "--batch_size",
    "8",
    "--steps_per_epoch",
    "3",
    "--print_freq",
    "2",
    "--progress",
    "false",
]
SEARCH_TINY = ["--dataset", "digits", *TINY[:4], "--n_nodes", "2", *TINY[4:]]
