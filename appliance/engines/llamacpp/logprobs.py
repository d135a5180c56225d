"""Log probabilities of generated tokens, from the logits as the sampler's logit bias and penalties left
them (before temperature, truncation and grammar): the model's own distribution, as the request shaped it.

Computed in numpy on the scheduler thread, only for sequences that ask: the logits row is the one llama.cpp
sampled from; bias and penalties follow llama.cpp's formulas (logit-bias sampler: add; penalties sampler over
the last PENALTY_WINDOW generated tokens: repetition divides a positive logit and multiplies a negative one,
then frequency times count and presence are subtracted), so no second sampler chain has to be kept in step.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from appliance.engines.llamacpp.core import SamplingParams, TokenLogprob
from appliance.engines.llamacpp.sampling import PENALTY_WINDOW


def adjusted_logits(
    logits: NDArray[np.float32], params: SamplingParams, history: list[int]
) -> NDArray[np.float64]:
    """A copy of `logits` with the request's logit bias and penalties applied."""
    adjusted = logits.astype(np.float64)
    for token, bias in params.logit_bias:
        adjusted[token] += bias
    penalised = params.repetition_penalty != 1.0 or params.presence_penalty or params.frequency_penalty
    if penalised and history:
        tokens, counts = np.unique(np.asarray(history[-PENALTY_WINDOW:]), return_counts=True)
        values = adjusted[tokens]
        repetition = params.repetition_penalty
        values = np.where(values > 0, values / repetition, values * repetition)
        values -= counts * params.frequency_penalty + params.presence_penalty
        adjusted[tokens] = values
    return adjusted


def token_logprob(
    logits: NDArray[np.float32],
    token: int,
    params: SamplingParams,
    history: list[int],
    token_bytes: Callable[[int], bytes],
) -> TokenLogprob:
    """The log probability of `token` at this step and the `params.logprobs` likeliest tokens."""
    adjusted = adjusted_logits(logits, params, history)
    peak = float(adjusted.max())
    log_total = peak + float(np.log(np.exp(adjusted - peak).sum()))
    wanted = params.logprobs or 0
    top: tuple[tuple[bytes, float], ...] = ()
    if wanted:
        best = np.argpartition(-adjusted, wanted - 1)[:wanted]
        best = best[np.argsort(-adjusted[best], kind="stable")]
        top = tuple((token_bytes(int(t)), float(adjusted[t]) - log_total) for t in best)
    return TokenLogprob(token_bytes(token), float(adjusted[token]) - log_total, top)
