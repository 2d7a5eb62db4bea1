"""The course exercise: VGG Block2 -> Block3 -> fc -> fc (vgg7) on CIFAR-100.

Searches each block's width and max-pool stride, the fc width, the learning rate and its schedule, the
optimizer, weight decay, batch size and dropout. Conditional parameters (momentum only for SGD, step size and
gamma only for the step schedule) need a define-by-run space: `space(trial)` below.
"""

DATASET = "cifar100"
MODEL = "vgg7"
METRIC = "val_acc"  # top-1 on the 5,000 held-out training images; the test set is touched once, at the end
MODE = "max"
MAX_EPOCHS = 30  # epochs of a full trial
GRACE_PERIOD = 3  # epochs before ASHA may stop a trial: early CIFAR epochs rank configs noisily
REDUCTION_FACTOR = 3  # ASHA keeps the top third at each rung (epochs 3, 9, 27)
NUM_SAMPLES = 40  # trials
MAX_CONCURRENT = 0  # 0 = as many as the cluster holds
CPUS_PER_TRIAL = 1.0
GPUS_PER_TRIAL = 0.0  # 0.25 packs four trials on one GPU
SEED = 0  # TPE, the train/val split and weight init
VAL_FRACTION = 0.1  # 45,000 train / 5,000 validation
# The exercise's real question is accuracy against compute: this space spans 36M (narrow, stride-2 pools) to 970M
# (wide, stride 1) MACs per image. TPE searches along the front of both; ASHA stops trials on val_acc, the first.
OBJECTIVES = {"val_acc": "max", "macs": "min"}
MAX_MACS = 0  # a budget such as 200e6 refuses the costliest configs before they train; 0 = no limit
FIXED = {"augment": True, "label_smoothing": 0.0}
SMOKE = {"width1": 16, "width2": 32, "fc1": 64}  # small widths so --smoke runs in minutes on a CPU


def space(trial):
    trial.suggest_categorical("width1", [32, 64, 96])  # Block2's channels
    trial.suggest_categorical("width2", [64, 128, 192])  # Block3's channels
    trial.suggest_categorical("stride1", [1, 2])  # max-pool stride after Block2 (kernel 2)
    trial.suggest_categorical("stride2", [1, 2])  # max-pool stride after Block3
    trial.suggest_categorical("fc1", [256, 512, 1024])  # the hidden fc layer
    trial.suggest_float("dropout", 0.0, 0.5)
    trial.suggest_float("lr", 1e-3, 0.3, log=True)  # peak learning rate
    trial.suggest_float("weight_decay", 1e-5, 1e-2, log=True)
    trial.suggest_categorical("batch_size", [64, 128, 256])
    optimizer = trial.suggest_categorical("optimizer", ["sgd", "adamw"])
    if optimizer == "sgd":
        trial.suggest_float("momentum", 0.8, 0.95)
        trial.suggest_categorical("nesterov", [False, True])
    scheduler = trial.suggest_categorical("scheduler", ["step", "cosine", "onecycle", "plateau"])
    if scheduler == "step":
        trial.suggest_int("step_size", 5, 20)  # epochs between decays
        trial.suggest_float("gamma", 0.1, 0.5)  # the seeds divide by 3 (gamma 0.33) every 20 epochs
    elif scheduler == "cosine":
        trial.suggest_int("warmup_epochs", 0, 3)
