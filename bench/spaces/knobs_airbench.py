"""The knobs benchmark's contender: lr per 1024 examples and weight decay decoupled from lr (airbench's units).

The same model, data, budget and seeds as bench/spaces/knobs_torch.py, and ranges of the same width (two decades
of lr, three of decay) centred where that file's are at batch 128: lr 0.1 there is lr 0.8 per 1024 examples here,
and lr 0.1 x weight_decay 5e-4 per step there is 4e-4 per 1024 examples here. Each knob now acts alone.
"""

from ray import tune

DATASET = "fashion_mnist"
MODEL = "vgg7"
METRIC = "val_acc"
MAX_EPOCHS = 4
GRACE_PERIOD = 1
REDUCTION_FACTOR = 3
NUM_SAMPLES = 16
MAX_CONCURRENT = 2
SEED = 0
TRAIN_SUBSET = 8000
FIXED = {"augment": False, "val_subset": 2000, "width1": 16, "width2": 32, "fc1": 128, "scheduler": "onecycle",
         "lr_batch": 1024, "decoupled_wd": True}  # fmt: skip

SPACE = {
    "batch_size": tune.choice([32, 64, 128, 256, 512]),
    "lr": tune.loguniform(0.08, 8.0),  # per 1024 examples: a step uses lr x batch_size / 1024
    "weight_decay": tune.loguniform(1.3e-5, 1.3e-2),  # decayed per 1024 examples at the peak, whatever lr is
    "dropout": tune.uniform(0.0, 0.5),
}
