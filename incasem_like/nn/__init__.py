"""Networks, checkpoints, blockwise-exact inference and the bundled models."""
