"""The orchestration-overhead benchmark's space: bench/overhead.py's trainable trains nothing, so only the
settings (30 trials, 10 epochs, ASHA's rungs) and the shape of the space matter.
"""

from ray import tune

DATASET = "fashion_mnist"
MODEL = "vgg7"
METRIC = "val_acc"
MODE = "max"
MAX_EPOCHS = 10  # reported epochs of a full trial
GRACE_PERIOD = 1
REDUCTION_FACTOR = 3  # rungs at epochs 1, 3 and 9
NUM_SAMPLES = 30
MAX_CONCURRENT = 2  # one trial per core of a 2-core machine
AUDIT_FRACTION = 0  # bare Tune has no audit controls: the same trials and epochs on both sides
SEED = 0

SPACE = {
    "lr": tune.loguniform(1e-3, 0.3),
    "dropout": tune.uniform(0.0, 0.5),
    "width1": tune.choice([32, 64, 96]),
    "optimizer": tune.choice(["sgd", "adamw"]),
}
