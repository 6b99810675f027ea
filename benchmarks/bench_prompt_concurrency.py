"""Wall time of the prompts stage (openai backend) with concurrent vs sequential requests.

Runs the real stage on small demo-like data (flat-colour 32x40 frames with a moving square) against
the local fake OpenAI-compatible server with a fixed added latency per request, once with
`concurrency: 1` and once with `concurrency: N`, each in a fresh workspace (empty caches).

    python benchmarks/bench_prompt_concurrency.py [--videos 32] [--frames 8] [--latency 0.2] [--concurrency 8]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fake_openai_server import FakeOpenAIServer, write_workspace  # noqa: E402

from cater.stages.prompts import main as prompts_stage  # noqa: E402


def timed_run(server: FakeOpenAIServer, root: Path, videos: int, frames: int, concurrency: int) -> float:
    generators = {"gpt": {"backend": "openai", "model": "gpt-4o-mini", "base_url": server.base_url,
                          "api_key_env": "FAKE_SERVER_KEY", "concurrency": concurrency, "image_size": 64,
                          "max_retries": 0, "timeout": 30}}
    write_workspace(root, generators, num_videos=videos, num_frames=frames, batch_size=videos)
    before = len(server.requests)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        start = time.perf_counter()
        code = prompts_stage(["--generator", "gpt"])
        elapsed = time.perf_counter() - start
    finally:
        os.chdir(cwd)
    if code != 0 or len(server.requests) - before != videos:
        raise SystemExit(f"stage failed (exit {code}, {len(server.requests) - before} requests for {videos} videos)")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=32)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds added to every request")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    os.environ.setdefault("FAKE_SERVER_KEY", "bench-local")  # the fake server's own key, never OPENAI_API_KEY
    with FakeOpenAIServer(latency=args.latency) as server, tempfile.TemporaryDirectory() as tmp:
        sequential = timed_run(server, Path(tmp) / "sequential", args.videos, args.frames, 1)
        concurrent = timed_run(server, Path(tmp) / "concurrent", args.videos, args.frames, args.concurrency)
        print(f"{args.videos} videos x {args.frames} frames, {args.latency * 1000:.0f} ms added latency per request")
        print(f"sequential (concurrency 1): {sequential:6.2f} s")
        print(f"concurrent (concurrency {args.concurrency}): {concurrent:6.2f} s")
        print(f"speed-up: {sequential / concurrent:.2f}x")


if __name__ == "__main__":
    main()
