"""Training, read in this order: data.py (where the images live) and folds.py (one fold's placed
data, FoldData), loop.py (train_one_epoch, evaluate, and train_one driving them), with
checkpoints.py (resume), compile.py, timing.py and scores.py beside it; sweep.py (every model,
seed and fold of `bench run`); distributed.py (torchrun) and tblog.py (TensorBoard)."""
