"""vgg7 on CIFAR-10: the course exercise's architecture on the 10-class set, a dict space."""

from ray import tune

DATASET = "cifar10"
MODEL = "vgg7"
METRIC = "val_acc"
MODE = "max"
MAX_EPOCHS = 20
GRACE_PERIOD = 2
REDUCTION_FACTOR = 3  # rungs at epochs 2, 6, 18
NUM_SAMPLES = 30
SEED = 0
FIXED = {"augment": True, "scheduler": "cosine", "optimizer": "sgd", "momentum": 0.9}
SMOKE = {"width1": 16, "width2": 32, "fc1": 64}

SPACE = {
    "width1": tune.choice([32, 64, 96]),
    "width2": tune.choice([64, 128, 192]),
    "stride1": tune.choice([1, 2]),
    "stride2": tune.choice([1, 2]),
    "fc1": tune.choice([256, 512]),
    "dropout": tune.uniform(0.0, 0.5),
    "lr": tune.loguniform(0.005, 0.3),
    "weight_decay": tune.loguniform(1e-5, 1e-2),
    "batch_size": tune.choice([64, 128, 256]),
}
