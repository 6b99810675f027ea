"""Run the teacher stage on CUDA and compare it with CPU fp32, teacher by teacher.

For every entry of `teacher.models` in the workspace's params.yaml this runs the real stage
(`python -m cater.stages.teacher`) in fp32 on the CPU (or reuses such outputs already in the workspace), in fp16 on CUDA, and, for Video-LLaVA,
IDEFICS and Chat-UniVi, in 4-bit on CUDA when bitsandbytes imports. It prints and writes (`--out`) the wall time, the
share of samples whose chosen option agrees with CPU fp32, and the largest letter-logit gap.

    python scripts/gpu_teacher_check.py --workspace . --out gpu_check.json
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml


def variants(models: dict, cuda: bool, bnb: bool):
    for name, cfg in models.items():
        yield f"{name}-cpu-fp32", name, {**cfg, "device": "cpu", "dtype": "fp32"}
        if cuda:
            yield f"{name}-cuda-fp16", name, {**cfg, "device": "cuda", "dtype": "fp16"}
            if bnb and (cfg.get("family") in ("videollava", "chatunivi")
                        or (cfg.get("family") == "flamingo" and cfg.get("backend", "idefics") == "idefics")):
                yield f"{name}-cuda-4bit", name, {**cfg, "device": "cuda", "dtype": "fp16", "quantization": "4bit"}


def read_rows(path: Path) -> dict[str, dict]:
    return {row["key"]: row for row in map(json.loads, path.read_text().splitlines())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", default=".")
    parser.add_argument("--out", default="gpu_check.json")
    args = parser.parse_args()
    import torch

    cuda = torch.cuda.is_available()
    try:
        import bitsandbytes  # noqa: F401

        bnb = True
    except Exception:
        bnb = False
    root = Path(args.workspace).resolve()
    params = yaml.safe_load((root / "params.yaml").read_text())
    results = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__,
               "bitsandbytes": bnb, "runs": []}
    reference: dict[str, dict] = {}
    for tag, name, cfg in variants(params["teacher"]["models"], cuda, bnb):
        done = root / "data" / "teacher" / tag / "outputs.jsonl"
        if tag.endswith("cpu-fp32") and done.exists():  # a reference computed earlier (e.g. on another machine)
            reference[name] = read_rows(done)
            print(json.dumps({"run": tag, "reused": str(done.relative_to(root))}), flush=True)
            continue
        run_params = copy.deepcopy(params)
        run_params["teacher"]["models"] = {tag: cfg}
        params_path = root / f"params-{tag}.yaml"
        params_path.write_text(yaml.safe_dump(run_params))
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "cater.stages.teacher", "--name", tag, "--params", str(params_path),
                               "--no-progress"], cwd=root, capture_output=True, text=True, env=os.environ)
        seconds = time.perf_counter() - start
        entry = {"run": tag, "exit": proc.returncode, "seconds": round(seconds, 2)}
        if proc.returncode != 0:
            entry["error"] = (proc.stderr or proc.stdout).strip().splitlines()[-1][:300]
        else:
            rows = read_rows(root / "data" / "teacher" / tag / "outputs.jsonl")
            entry["samples"] = len(rows)
            if tag.endswith("cpu-fp32"):
                reference[name] = rows
            else:
                ref = reference[name]
                agree = sum(rows[k]["hard_idx"] == ref[k]["hard_idx"] for k in ref)
                gap = max(abs(a - b) for k in ref for a, b in zip(rows[k]["choice_logits"], ref[k]["choice_logits"]))
                entry.update(agree_with_cpu_fp32=round(agree / len(ref), 4), max_logit_gap=round(gap, 5))
        results["runs"].append(entry)
        print(json.dumps(entry), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(r["exit"] == 0 for r in results["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
