"""A llama.cpp sampler chain per request, built from its sampling parameters."""

from __future__ import annotations

import ctypes
import json
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp.llama_grammar import JSON_GBNF

from appliance.engines.llamacpp.core import SamplingParams
from appliance.engines.llamacpp.schema_grammar import converted, schema_grammar
from appliance.errors import InvalidRequestError
from appliance.settings import SchemaLimits
from appliance.wire.schema_limits import check_schema

DEFAULT_LIMITS = SchemaLimits()
PENALTY_WINDOW = 64
"""Tokens the repetition, presence and frequency penalties look back over (llama.cpp's default)."""


def grammar_for(response_format: dict[str, Any] | None, limits: SchemaLimits = DEFAULT_LIMITS) -> str | None:
    """The GBNF grammar that constrains output to `response_format`, or None for free text; a schema over
    `limits`, or one the converter cannot take, is a 400 naming `response_format`."""
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
        what = "response_format's JSON Schema"
        check_schema(schema, limits, param="response_format", what=what)
        copy = json.loads(json.dumps(schema))  # the converter resolves references in place
        return converted(limits, "response_format", what, lambda: schema_grammar(copy, limits))
    raise InvalidRequestError(f"unknown response_format type {kind!r}", param="response_format")


def needs_conversion(response_format: dict[str, Any] | None) -> bool:
    """Whether `response_format` carries a JSON Schema to convert (work for the grammar thread)."""
    return response_format is not None and response_format.get("type") == "json_schema"


def build_grammar(params: SamplingParams, vocab: Any) -> Any:
    """The request's grammar sampler, kept apart from the chain (see GrammarSampling), or None."""
    if params.grammar is None:
        return None
    grammar = llama_cpp.llama_sampler_init_grammar(vocab, params.grammar.encode(), b"root")
    if not grammar:
        raise InvalidRequestError("the output grammar could not be built", param="response_format")
    return grammar


class GrammarSampling:
    """Sampling under a grammar as llama-server does it: the chain picks a token from the full logits, the
    grammar checks only that one, and only a rejected token costs the grammar's pass over the whole
    vocabulary (then the chain picks again among what the grammar allows). Checking every candidate at every
    step cost about 350 ms a token on the embedded default's 49k vocabulary.

    The candidates are a numpy array laid out as llama_token_data, shared with llama.cpp by pointer.
    Scheduler thread only.
    """

    def __init__(self, n_vocab: int) -> None:
        layout = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self._all = np.zeros(n_vocab, dtype=layout)
        self._one = np.zeros(1, dtype=layout)
        self._all_view = self._view(self._all)
        self._one_view = self._view(self._one)

    @staticmethod
    def _view(array: Any) -> Any:
        data = array.ctypes.data_as(llama_cpp.llama_token_data_p)
        return llama_cpp.llama_token_data_array(data, len(array), -1, False)

    def _fill(self, logits: Any) -> Any:
        self._all["id"] = self._ids  # samplers sort the candidates in place
        self._all["logit"] = logits
        self._all["p"] = 0.0
        view = self._all_view
        view.size, view.selected, view.sorted = len(self._all), -1, False
        return view

    def _allows(self, grammar: Any, token: int) -> bool:
        self._one[0] = (token, 0.0, 0.0)
        view = self._one_view
        view.size, view.selected, view.sorted = 1, -1, False
        llama_cpp.llama_sampler_apply(grammar, ctypes.byref(view))
        return bool(np.isfinite(self._one["logit"][0]))

    def sample(self, chain: Any, grammar: Any, logits: Any) -> int:
        """The next token from `logits` (one row, n_vocab floats) under the grammar; accepted by both."""
        view = self._fill(logits)
        llama_cpp.llama_sampler_apply(chain, ctypes.byref(view))
        token = int(self._all["id"][view.selected])
        if not self._allows(grammar, token):
            view = self._fill(logits)
            llama_cpp.llama_sampler_apply(grammar, ctypes.byref(view))
            llama_cpp.llama_sampler_apply(chain, ctypes.byref(view))
            token = int(self._all["id"][view.selected])
        llama_cpp.llama_sampler_accept(grammar, token)
        llama_cpp.llama_sampler_accept(chain, token)
        return token


def build_sampler(params: SamplingParams, vocab: Any, n_vocab: int) -> Any:
    """The chain: logit bias, penalties, then greedy or top-k/top-p/min-p/temperature/dist (a grammar is
    applied apart from it, by GrammarSampling)."""
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
