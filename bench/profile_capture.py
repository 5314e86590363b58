"""Where a captured step's time goes: cProfile and torch.profiler over captured steps of one model.

Complements ``bench/probe_overhead.py`` (which says how much a capture costs) by saying where: the
Python functions with the most own time, and the PyTorch operations with the most CPU time (on a
GPU, small models' captures are bound by dispatching and launching, so this is the bill) and, on
CUDA, the most GPU time (the bill of a big model, whose step is bound by the GPU).

Usage: python bench/profile_capture.py [--device cpu|cuda] [--only NAME ...] [--steps 64] [--top 25]
       [--torch-stats]
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from probe_overhead import CONFIGS, make_dataset, make_trainer, run_block  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--only", nargs="*", default=["mlp"], help="config names")
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--torch-stats", action="store_true", help="CPU runs take the GPU path's reductions")
    args = parser.parse_args()
    for config in CONFIGS:
        if config.name not in args.only:
            continue
        trainer = make_trainer(config, make_dataset(config.data), args.device, args.torch_stats)
        for mode in ("bare", "every", "bare", "every"):
            run_block(trainer, mode, 8, args.device)
        print(f"=== {config.name} on {args.device}: {args.steps} captured steps ===")
        profile = cProfile.Profile()
        profile.enable()
        run_block(trainer, "every", args.steps, args.device)
        profile.disable()
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(args.top)
        print("\n".join(line for line in text.getvalue().splitlines() if line.strip())[:6000])
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats("engine", args.top)
        print("\n".join(line for line in text.getvalue().splitlines() if line.strip())[:6000])
        activities = [torch.profiler.ProfilerActivity.CPU]
        if args.device == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        for mode in ("bare", "every"):
            with torch.profiler.profile(activities=activities) as prof:
                run_block(trainer, mode, args.steps, args.device)
            print(f"--- torch.profiler, {mode}: {args.steps} steps ---")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top,
                                            max_name_column_width=40))
            if args.device == "cuda":  # a GPU-bound step's bill: the kernels' own time on the device
                print(f"--- GPU time by operation, {mode} ---")
                averages = prof.key_averages()
                key = "self_device_time_total" if hasattr(averages[0], "self_device_time_total") \
                    else "self_cuda_time_total"  # (the older name)
                print(averages.table(sort_by=key, row_limit=args.top, max_name_column_width=40))
        trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
