"""What a model costs per image: parameters and multiply-accumulates counted without weights, latency measured."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Parameters and multiply-accumulates (convolutions and linear layers) of one image's forward pass.

    Works on a model built under ``with torch.device("meta"):``, so nothing is allocated.

    Args:
        model: the model; its parameters' device is where the pass runs.
        input_shape: one image's (channels, height, width).
    """
    x = torch.empty(1, *input_shape, device=next(model.parameters()).device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    # FlopCounterMode counts a multiply-accumulate as two FLOPs
    return {"params": sum(p.numel() for p in model.parameters()), "macs": counter.get_total_flops() // 2}


def latency_ms(model: nn.Module, input_shape: tuple[int, ...], repeats: int = 20) -> float:
    """Median wall time of one inference at batch 1 on the model's device, after warm-up, in milliseconds."""
    device = next(model.parameters()).device
    x = torch.randn(1, *input_shape, device=device)
    was_training = model.training
    model.eval()
    times = []
    with torch.no_grad():
        for i in range(repeats + 3):
            start = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= 3:  # the first passes pick kernels and warm caches
                times.append(time.perf_counter() - start)
    model.train(was_training)
    return statistics.median(times) * 1000
