"""Write a tiny causal LM (LlamaForCausalLM + tokenizer with a chat template) for the `hf` prompt backend.

    python scripts/make_tiny_llm.py models/tiny-llm [--seed 0]                   # random weights: random text
    python scripts/make_tiny_llm.py models/tiny-llm-fixed --answer-frames 8      # always the same valid answer

Random weights exercise loading, generation and the parse-failure path. `--answer-frames N` wires
the model to answer every prompt with one fixed, parseable "Events:/Frames:" list for N frames (the
same text for every video: useful to run the pipeline, useless as prompts). Nothing is downloaded.
"""
from __future__ import annotations

import argparse

from cater.testing.tiny.causal_lm import write_tiny_causal_lm


def fixed_answer(num_frames: int) -> list[str]:
    lines = ["Events:\n", "1. Something appears.\n", "2. It moves across the frame.\n", "Frames:\n"]
    return lines + [f"{i + 1}. Frame number {i + 1} of the clip.\n" for i in range(num_frames)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="directory to write (config, safetensors weights, tokenizer)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--answer-frames", type=int, default=0, help="wire a fixed valid answer for this many frames")
    args = parser.parse_args(argv)
    script = fixed_answer(args.answer_frames) if args.answer_frames > 0 else None
    path = write_tiny_causal_lm(args.out, seed=args.seed, script=script)
    print(f"tiny causal LM -> {path}")


if __name__ == "__main__":
    main()
