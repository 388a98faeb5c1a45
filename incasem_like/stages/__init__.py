"""One module per blockwise stage: a validated config, a pure per-block function, a thin task."""
