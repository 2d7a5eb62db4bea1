"""The knobs benchmark's baseline: lr, weight decay and batch size searched as torch.optim means them.

bench/knobs.py runs it against bench/spaces/knobs_airbench.py: the same model, data, budget and seeds, the same
searched ranges spelled in the other parameterization. Here the step lr is `lr` whatever the batch size, and the
decay per step is lr x weight_decay: the good configs lie on ridges TPE has to find.
"""

from ray import tune

DATASET = "fashion_mnist"
MODEL = "vgg7"
METRIC = "val_acc"
MAX_EPOCHS = 4  # epochs of a full trial
GRACE_PERIOD = 1
REDUCTION_FACTOR = 3  # rungs at epochs 1 and 3
NUM_SAMPLES = 16  # configs, the same for both parameterizations
MAX_CONCURRENT = 2  # one trial per core
SEED = 0
TRAIN_SUBSET = 8000  # images
FIXED = {"augment": False, "val_subset": 2000, "width1": 16, "width2": 32, "fc1": 128, "scheduler": "onecycle"}

SPACE = {
    "batch_size": tune.choice([32, 64, 128, 256, 512]),
    "lr": tune.loguniform(0.01, 1.0),  # the step lr, onecycle's peak
    "weight_decay": tune.loguniform(1e-5, 1e-2),  # coupled L2: the decay per step is lr x weight_decay
    "dropout": tune.uniform(0.0, 0.5),
}
