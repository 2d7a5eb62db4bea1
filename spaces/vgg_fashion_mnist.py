"""vgg7 on Fashion-MNIST (28x28 grey): real data that works offline (Debian's dataset-fashion-mnist).

Sized for 20 minutes on 2 CPU cores, by design rather than luck:
- The whole training set and short runs: vgg7 at widths 32/64 with the trainer's defaults (SGD, onecycle to lr
  0.1, no augmentation) reaches 0.928 test accuracy in 5 epochs (5 minutes on 2 cores). That config is trial 1
  (START_WITH), so the winner is never worse than the trainer's default at this budget.
- The rest searches around it where it matters (learning rate, weight decay, dropout, widths, the first pool's
  stride, the fc width); ASHA stops the weak ones after one epoch, and TIME_BUDGET ends the search in time.
"""

from ray import tune

DATASET = "fashion_mnist"
MODEL = "vgg7"
METRIC = "val_acc"
MODE = "max"
MAX_EPOCHS = 5
GRACE_PERIOD = 1
REDUCTION_FACTOR = 3  # rungs at epochs 1 and 3
NUM_SAMPLES = 12
TIME_BUDGET = "17m"  # running trials stop; the best that ran in full wins
CPUS_PER_TRIAL = 1.0  # two trials at once on 2 cores
SEED = 0
TRAIN_SUBSET = 0  # all 54,000 training images; 6,000 are held out for validation
MAX_MACS = 60e6  # stride-1 pools at the wide setting (77M) cost 3x for little here
FIXED = {"augment": False, "optimizer": "sgd", "momentum": 0.9, "scheduler": "onecycle"}
START_WITH = [  # the trainer's defaults at widths 32/64
    {"width1": 32, "width2": 64, "stride1": 2, "fc1": 256, "dropout": 0.5, "lr": 0.1, "weight_decay": 5e-4,
     "batch_size": 128},
]  # fmt: skip
SMOKE = {"width1": 8, "width2": 16, "fc1": 32, "TIME_BUDGET": ""}

SPACE = {
    "width1": tune.choice([16, 32]),
    "width2": tune.choice([32, 64]),
    "stride1": tune.choice([1, 2]),
    "fc1": tune.choice([128, 256]),
    "dropout": tune.uniform(0.0, 0.5),
    "lr": tune.loguniform(0.03, 0.3),  # onecycle's peak
    "weight_decay": tune.loguniform(1e-4, 2e-3),
    "batch_size": tune.choice([128, 256]),
}
