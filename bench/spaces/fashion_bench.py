"""The search-efficiency benchmark's space: vgg7 on real Fashion-MNIST, sized for a 2-core CPU.

bench/efficiency.py runs it twice: with TPE + ASHA (`search.run.search`), and as random search with every
trial trained in full. A wide learning-rate range and both optimizers give ASHA bad configs to stop early.
"""

from ray import tune

DATASET = "fashion_mnist"
MODEL = "vgg7"
METRIC = "val_acc"
MODE = "max"
MAX_EPOCHS = 16  # epochs of a full trial
GRACE_PERIOD = 1
REDUCTION_FACTOR = 8  # rungs at epochs 1 and 8: an eighth of the trials reach epoch 8, a 64th epoch 16
NUM_SAMPLES = 24  # configs, the same number for both searches
MAX_CONCURRENT = 2  # one trial per core
SEED = 0
TRAIN_SUBSET = 4000  # images; an epoch takes about two seconds on one core
FIXED = {"augment": False, "val_subset": 2500, "fc1": 64, "batch_size": 64, "scheduler": "cosine"}

SPACE = {
    "width1": tune.choice([8, 16]),
    "width2": tune.choice([16, 32]),
    "dropout": tune.uniform(0.0, 0.5),
    "optimizer": tune.choice(["sgd", "adamw"]),
    "lr": tune.loguniform(1e-4, 0.5),  # adamw diverges or stalls at the top, sgd crawls at the bottom
    "weight_decay": tune.loguniform(1e-5, 1e-2),
}
