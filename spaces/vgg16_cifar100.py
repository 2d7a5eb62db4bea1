"""Deeper presets on CIFAR-100: vgg11/13/16 with batch norm, searched with a width multiplier.

A plain dict of ray.tune samplers: no conditional parameters here.
"""

from ray import tune

DATASET = "cifar100"
MODEL = "vgg16_bn"  # the default; SPACE searches the depth too
METRIC = "val_acc"
MODE = "max"
MAX_EPOCHS = 40
GRACE_PERIOD = 4  # deeper nets start slower: give them 4 epochs before the first cut
REDUCTION_FACTOR = 3
NUM_SAMPLES = 30
CPUS_PER_TRIAL = 2.0
GPUS_PER_TRIAL = 0.5  # two trials per GPU; a vgg16 at 32x32 leaves a big GPU mostly idle
SEED = 0
FIXED = {"augment": True, "optimizer": "sgd", "momentum": 0.9, "nesterov": True, "scheduler": "onecycle"}
SMOKE = {"GPUS_PER_TRIAL": 0.0, "width_mult": 0.125, "fc1": 32, "fc2": 32}

SPACE = {
    "model": tune.choice(["vgg11_bn", "vgg13_bn", "vgg16_bn"]),
    "width_mult": tune.choice([0.5, 0.75, 1.0]),  # times the published widths 64..512
    "dropout": tune.uniform(0.0, 0.5),
    "lr": tune.loguniform(0.01, 0.4),  # onecycle's peak
    "weight_decay": tune.loguniform(1e-5, 5e-3),
    "batch_size": tune.choice([128, 256]),
    "label_smoothing": tune.choice([0.0, 0.1]),
}
