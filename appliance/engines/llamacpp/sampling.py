"""A llama.cpp sampler chain per request, built from its sampling parameters."""

from __future__ import annotations

import json
from typing import Any

import llama_cpp
from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from appliance.engines.llamacpp.core import SamplingParams
from appliance.errors import InvalidRequestError

PENALTY_WINDOW = 64
"""Tokens the repetition, presence and frequency penalties look back over (llama.cpp's default)."""


def grammar_for(response_format: dict[str, Any] | None) -> str | None:
    """The GBNF grammar that constrains output to `response_format`, or None for free text."""
    if response_format is None or response_format.get("type") in (None, "text"):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return str(JSON_GBNF)
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise InvalidRequestError(
                "response_format.json_schema.schema must be a JSON Schema object", param="response_format"
            )
        try:
            return str(json_schema_to_gbnf(json.dumps(schema)))
        except (ValueError, KeyError, TypeError, NotImplementedError) as error:
            raise InvalidRequestError(f"unsupported JSON schema: {error}", param="response_format") from error
    raise InvalidRequestError(f"unknown response_format type {kind!r}", param="response_format")


def build_sampler(params: SamplingParams, vocab: Any, n_vocab: int) -> Any:
    """The chain: logit bias, penalties, grammar, then greedy or top-k/top-p/min-p/temperature/dist."""
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())

    def add(sampler: Any) -> None:
        llama_cpp.llama_sampler_chain_add(chain, sampler)

    if params.logit_bias:
        biases = (llama_cpp.llama_logit_bias * len(params.logit_bias))()
        for slot, (token, bias) in enumerate(params.logit_bias):
            if not 0 <= token < n_vocab:
                llama_cpp.llama_sampler_free(chain)
                raise InvalidRequestError(
                    f"logit_bias names token {token}, outside the vocabulary", param="logit_bias"
                )
            biases[slot] = llama_cpp.llama_logit_bias(token, bias)
        add(llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(params.logit_bias), biases))
    if params.repetition_penalty != 1.0 or params.presence_penalty or params.frequency_penalty:
        add(
            llama_cpp.llama_sampler_init_penalties(
                PENALTY_WINDOW, params.repetition_penalty, params.frequency_penalty, params.presence_penalty
            )
        )
    if params.grammar is not None:
        grammar = llama_cpp.llama_sampler_init_grammar(vocab, params.grammar.encode(), b"root")
        if not grammar:
            llama_cpp.llama_sampler_free(chain)
            raise InvalidRequestError("the output grammar could not be built", param="response_format")
        add(grammar)
    if params.temperature <= 0.0:
        add(llama_cpp.llama_sampler_init_greedy())
        return chain
    if params.top_k > 0:
        add(llama_cpp.llama_sampler_init_top_k(params.top_k))
    if params.top_p < 1.0:
        add(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
    if params.min_p > 0.0:
        add(llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
    add(llama_cpp.llama_sampler_init_temp(params.temperature))
    seed = llama_cpp.LLAMA_DEFAULT_SEED if params.seed is None else params.seed & 0xFFFFFFFF
    add(llama_cpp.llama_sampler_init_dist(seed))
    return chain
