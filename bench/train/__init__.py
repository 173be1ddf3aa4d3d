"""Training: the data context and placement, one epoch, evaluation, checkpoints and resume, the sweep."""
