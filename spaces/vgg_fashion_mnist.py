"""vgg7 on Fashion-MNIST (28x28 grey): real data that works offline (Debian's dataset-fashion-mnist).

Sized for a CPU: a 12,000-image training subset, narrow widths, a few epochs.
"""

from ray import tune

DATASET = "fashion_mnist"
MODEL = "vgg7"
METRIC = "val_acc"
MODE = "max"
MAX_EPOCHS = 4
GRACE_PERIOD = 1
REDUCTION_FACTOR = 2  # rungs at epochs 1, 2
NUM_SAMPLES = 12
SEED = 0
TRAIN_SUBSET = 12000  # images; 0 = all 54,000
FIXED = {"augment": False, "val_subset": 2000, "fc1": 128}  # crops and flips buy little on 28x28 garments
SMOKE = {"width1": 8, "width2": 16, "fc1": 32, "val_subset": 0}

SPACE = {
    "width1": tune.choice([16, 32]),
    "width2": tune.choice([32, 64]),
    "stride1": tune.choice([1, 2]),
    "dropout": tune.uniform(0.0, 0.5),
    "optimizer": tune.choice(["sgd", "adamw"]),
    "lr": tune.loguniform(1e-3, 0.2),
    "weight_decay": tune.loguniform(1e-5, 1e-3),
    "scheduler": tune.choice(["cosine", "onecycle", "step"]),
    "batch_size": tune.choice([64, 128]),
}
