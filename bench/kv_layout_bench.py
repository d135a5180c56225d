"""Issue 16: the cost of one decode step in llama.cpp's two KV layouts, side by side in one run.

    .venv/bin/python bench/kv_layout_bench.py [--sequences 16] [--prompt-tokens 20,200,400] [--steps 40]

For each prompt length, `--sequences` sequences first evaluate a prompt of that many tokens, then decode
`--steps` steps of one token each, all sequences in one batch, as the worker's scheduler does. Printed: the
mean step time and tokens/s with one stream of cells per sequence (llama-server's `-np`) and with one
unified pool (llama-server's default), and the ratio unified / own streams. The worker chooses own
streams whenever the pool holds every slot's full context (appliance/engines/llamacpp/sizing.py),
because in the unified pool each token scans every sequence's cells through the attention mask.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import llama_cpp

from appliance.engines.llamacpp.native import ContextShape, NativeContext, NativeModel

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
FILLER = "the quick brown fox jumps over the lazy dog "


def step_seconds(model: NativeModel, shape: ContextShape, prompt_tokens: int, steps: int) -> float:
    """Mean seconds of one decode step of `shape.parallel` sequences after prompts of `prompt_tokens`."""
    context = NativeContext(model, shape)
    batch = context.batch
    try:

        def put(index: int, token: int, position: int, seq: int, logits: bool) -> None:
            batch.token[index], batch.pos[index], batch.n_seq_id[index] = token, position, 1
            batch.seq_id[index][0], batch.logits[index] = seq, logits

        for seq in range(shape.parallel):
            prompt = model.tokenize(f"Sequence {seq}: " + FILLER * prompt_tokens, add_bos=True)[
                :prompt_tokens
            ]
            for index, token in enumerate(prompt):
                put(index, token, index, seq, index == len(prompt) - 1)
            batch.n_tokens = len(prompt)
            if llama_cpp.llama_decode(context.ctx, batch) != 0:
                raise RuntimeError("prompt did not fit")
        started = time.perf_counter()
        for step in range(steps):
            for seq in range(shape.parallel):
                put(seq, 100 + seq, prompt_tokens + step, seq, True)
            batch.n_tokens = shape.parallel
            if llama_cpp.llama_decode(context.ctx, batch) != 0:
                raise RuntimeError("decode did not fit")
        return (time.perf_counter() - started) / steps
    finally:
        context.close()


def main(argv: list[str] | None = None) -> int:
    """Measure both layouts for each prompt length and print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--sequences", type=int, default=16)
    parser.add_argument(
        "--prompt-tokens", type=lambda s: [int(x) for x in s.split(",")], default=[20, 200, 400]
    )
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    model = NativeModel(args.model)
    print(f"{args.model.name}, {args.sequences} sequences, {args.threads} threads, {args.steps} steps")
    print("| prompt tokens | own streams ms/step | unified ms/step | own tok/s | unified tok/s | ratio |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    try:
        for prompt_tokens in args.prompt_tokens:
            stream = 1024 * ((prompt_tokens + args.steps) // 1024 + 1)
            shape = ContextShape(stream * args.sequences, args.sequences, 512, args.threads)
            own_shape = dataclasses.replace(shape, own_streams=True)
            own = step_seconds(model, own_shape, prompt_tokens, args.steps)
            unified = step_seconds(model, shape, prompt_tokens, args.steps)
            n = args.sequences
            print(
                f"| {prompt_tokens} | {own * 1000:.1f} | {unified * 1000:.1f} "
                f"| {n / own:.0f} | {n / unified:.0f} | {unified / own:.2f} |"
            )
    finally:
        model.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
