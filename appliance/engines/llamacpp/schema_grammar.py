"""JSON Schemas from requests into GBNF grammars, within limits.

llama-cpp-python's converter writes a repetition out in full: a 60-byte schema asking for a string of up to
100,000,000 characters became a 762 MB grammar after 10 s of CPU, and llama.cpp's parser then overflowed
the scheduler thread's stack and killed the worker. So a schema is checked before conversion
(appliance/wire/schema_limits.py), the converter is metered as it writes, llama.cpp parses the result here
once before any generation is queued, and every failure is the request's 400, never a 500 or an error in
the middle of a stream (which the gateway would count against the engine)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

import llama_cpp
from llama_cpp import llama_grammar

from appliance.errors import InvalidRequestError
from appliance.settings import SchemaLimits

P = ParamSpec("P")
T = TypeVar("T")
MAX_RULE_NAME = 64
"""Longest rule name kept as is. The converter names a rule after the path of property names to it and a
repetition writes that name out up to max_repetition times, so a long name would multiply the grammar."""
WORK_FACTOR = 4
"""How much grammar text the converter may write, rules written again included, per byte of the grammar it
may return: it rewrites some rules over and over (an object of 200 optional properties writes 1 MB on the way
to a 26 KB grammar, 600 of them take a second of CPU), so its work is bounded as well as its result."""
MESSAGE_CHARS = 200
"""How much of the converter's own message goes into the 400 (some quote the whole schema)."""


class GrammarTooLarge(Exception):
    """The converter wrote more than the request's budget allows."""


class BoundedConverter(llama_grammar.SchemaConverter):
    """The converter, with every rule it writes (again) charged to a budget and long rule names shortened.

    Every schema node the converter visits ends in `_add_rule`, so the budget bounds its work too: a schema
    whose `allOf` references inline each other's properties visits exponentially often while its result
    stays small, and runs out of budget instead of CPU.
    """

    def __init__(self, limits: SchemaLimits) -> None:
        untyped: Any = super()  # llama-cpp-python's converter has no annotations
        untyped.__init__(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
        self._budget = WORK_FACTOR * limits.max_grammar_bytes

    def _add_rule(self, name: str, rule: str) -> str:
        self._budget -= len(name) + len(rule)
        if self._budget < 0:
            raise GrammarTooLarge
        if len(name) > MAX_RULE_NAME:
            digest = hashlib.blake2s(name.encode(), digest_size=6).hexdigest()
            name = f"{name[: MAX_RULE_NAME - 13]}-{digest}"
        untyped: Any = super()
        return str(untyped._add_rule(name, rule))


def converted(limits: SchemaLimits, param: str, what: str, convert: Callable[[], str]) -> str:
    """Run `convert` (which writes with a BoundedConverter of `limits`); any failure is a 400, and so is a
    grammar larger than limits.max_grammar_bytes."""
    try:
        grammar = convert()
    except InvalidRequestError:
        raise
    except GrammarTooLarge as error:
        raise InvalidRequestError(
            f"{what} makes an output grammar of more than {limits.max_grammar_bytes} bytes", param=param
        ) from error
    # The converter is pure code over the request's schema: whatever it raises (it asserts, indexes
    # missing keys, recurses without bound on nested patterns) is the schema's fault.
    except Exception as error:
        reason = f"{type(error).__name__}: {error}"[:MESSAGE_CHARS]
        raise InvalidRequestError(f"{what} is not supported ({reason})", param=param) from error
    if len(grammar) > limits.max_grammar_bytes:
        raise InvalidRequestError(
            f"{what} makes an output grammar of more than {limits.max_grammar_bytes} bytes", param=param
        )
    return grammar


def schema_grammar(schema: dict[str, Any], limits: SchemaLimits) -> str:
    """The grammar of JSON matching `schema`, as llama-cpp-python's json_schema_to_gbnf writes it, metered.
    `schema` is changed (its references resolved in place): pass a copy."""
    converter: Any = BoundedConverter(limits)
    converter.visit(converter.resolve_refs(schema, "request"), "")
    return str(converter.format_grammar())


def check_parses(grammar: str, vocab: Any, param: str) -> None:
    """Let llama.cpp parse `grammar` as the scheduler will: a grammar it refuses (an empty alternative,
    repetition past its own limit) is the request's 400 now, not a failed generation later."""
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    if not sampler:
        raise InvalidRequestError("the output grammar could not be built", param=param)
    llama_cpp.llama_sampler_free(sampler)


class GrammarThread:
    """The one thread on which a worker turns request schemas into grammars. Never the event loop: a schema
    within the limits still takes up to a few hundred ms of CPU, which would stall every stream's relay.
    One thread: requests with schemas wait for each other, but the event loop shares the GIL with one
    converter at most, and requests without schemas never wait here."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grammar")

    async def run(self, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`work(*args, **kwargs)` on the grammar thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: work(*args, **kwargs))

    def close(self) -> None:
        """Stop the thread (a conversion under way finishes first)."""
        self._executor.shutdown(wait=True, cancel_futures=True)
