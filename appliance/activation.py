"""Blue-green model versions: load the new version beside the serving one, check it, switch, retire the old.

A version that does not load, fails the deep probe or fails a check of the prompt suite is refused and the
serving version is never touched. The switch is one assignment on the event loop; requests already sent
to the old version finish there (the supervisor stops it once its in-flight count is zero).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
import msgspec

from appliance.chain import Chains
from appliance.errors import ConflictError
from appliance.probe import probe_worker
from appliance.registry.models import ModelInfo, ModelRegistry
from appliance.settings import ActivationCheck, Settings
from appliance.supervisor import Supervisor, Worker, WorkerStartError, WorkerState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckOutcome:
    """One step of an activation's checks: what was checked, whether it passed, and why."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Activation:
    """A finished switch: the version now serving, the one it replaced, and the checks it passed."""

    model: ModelInfo
    replaced_version: str
    checks: tuple[CheckOutcome, ...]


class ActivationRefusedError(WorkerStartError):
    """The new version failed a check; the serving version keeps serving."""

    def __init__(self, message: str, checks: tuple[CheckOutcome, ...]) -> None:
        super().__init__(message)
        self.checks = checks


def _answer_text(payload: dict[str, object], chat: bool) -> tuple[str, int]:
    """The generated text and token count of an OpenAI answer (chat or completion)."""
    choices = payload.get("choices")
    usage = payload.get("usage")
    tokens = usage.get("completion_tokens", 0) if isinstance(usage, dict) else 0
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return "", 0
    first = choices[0]
    if chat:
        message = first.get("message")
        text = message.get("content") if isinstance(message, dict) else None
    else:
        text = first.get("text")
    return (text if isinstance(text, str) else ""), (tokens if isinstance(tokens, int) else 0)


async def run_check(worker: Worker, check: ActivationCheck, timeout_s: float) -> CheckOutcome:
    """Send one check's prompt to the worker (greedy) and judge the answer."""
    model = worker.model
    name = f"{'chat' if check.chat else 'completion'}: {check.prompt!r}"
    if check.chat and not (model.has_chat_template or model.chat_template_override is not None):
        return CheckOutcome(name, True, "skipped: the model has no chat template")
    body: dict[str, object] = {"model": model.name, "max_tokens": check.max_tokens, "temperature": 0.0}
    if check.chat:
        body["messages"] = [{"role": "user", "content": check.prompt}]
    else:
        body["prompt"] = check.prompt
    path = "/v1/chat/completions" if check.chat else "/v1/completions"
    try:
        answer = await worker.client.post(path, content=msgspec.json.encode(body), timeout=timeout_s)
    except httpx.TimeoutException:
        return CheckOutcome(name, False, f"no answer within {timeout_s:g} s")
    except httpx.HTTPError as error:
        return CheckOutcome(name, False, f"unreachable ({type(error).__name__})")
    if answer.status_code != 200:
        return CheckOutcome(name, False, f"status {answer.status_code}: {answer.text[:200]}")
    try:
        payload = msgspec.json.decode(answer.content, type=dict[str, object])
    except msgspec.DecodeError:
        return CheckOutcome(name, False, "the answer is not JSON")
    text, tokens = _answer_text(payload, check.chat)
    if tokens < 1:
        return CheckOutcome(name, False, "no token generated")
    if check.expect and check.expect.casefold() not in text.casefold():
        return CheckOutcome(name, False, f"expected {check.expect!r} in {text!r}")
    return CheckOutcome(name, True, f"{tokens} token(s): {text!r}")


async def _share_cores(serving: Worker) -> int:
    """Halve a CPU worker's compute threads while a new version loads and is checked beside it.

    Two llama.cpp workers each decoding with every core oversubscribe the CPU, and their OpenMP threads then
    wait on each other at every barrier: measured here, a 2-token probe took over 30 s and an activation
    under load 24 s instead of 2. Returns the threads to restore (0: nothing was changed).
    """
    kind = serving.kind
    if kind.compute_threads is None or kind.set_threads is None:
        return 0
    full = kind.compute_threads(serving.launch)
    if full < 2:
        return 0
    await _set_threads(serving, full // 2)
    return full


async def _set_threads(worker: Worker, threads: int) -> None:
    """Best effort: a worker that died meanwhile restarts with its full threads anyway."""
    if not threads or worker.kind.set_threads is None or worker.state is not WorkerState.READY:
        return
    try:
        await worker.kind.set_threads(worker.client, threads)
    except httpx.HTTPError as error:
        log.warning("could not set %s to %d threads: %s", worker.model.name, threads, error)


class Activations:
    """Activating and rolling back model versions in a running gateway, one activation per model at a time."""

    def __init__(
        self,
        settings: Settings,
        models: ModelRegistry,
        supervisor: Supervisor,
        chains: Chains,
        *,
        load: Callable[[str], Awaitable[float]] | None = None,
    ) -> None:
        self._settings = settings
        self._load = load
        """Loads a cold model (residency), so that its new version is checked beside a loaded one."""
        self._models = models
        self._supervisor = supervisor
        self._chains = chains
        self._busy: set[str] = set()
        self._retiring: set[asyncio.Task[None]] = set()

    async def activate(self, name: str, version: str) -> Activation:
        """Serve `version` of `name` if it loads and passes every check; else raise and change nothing."""
        current = self._models.resolve(name)
        target = self._models.version(current.name, version)
        if target.active:
            raise ConflictError(f"version {version!r} of {current.name!r} is already the one serving")
        if target.format != current.format:
            raise ConflictError(
                f"version {version!r} is {target.format}, the serving one {current.format}: "
                "a new version must have the same format"
            )
        if current.name in self._busy:
            raise ConflictError(f"an activation of {current.name!r} is already running")
        self._busy.add(current.name)
        try:
            return await self._activate(current, target)
        finally:
            self._busy.discard(current.name)

    async def rollback(self, name: str) -> Activation:
        """Go back to the version that served before the current one, with the same checks."""
        current = self._models.resolve(name)
        return await self.activate(current.name, self._models.previous(current.name).version)

    async def _activate(self, current: ModelInfo, target: ModelInfo) -> Activation:
        log.info("activating %s version %s beside version %s", target.name, target.version, current.version)
        if self._load is not None and current.name not in self._supervisor.workers:
            await self._load(current.name)  # cold: load the serving version, then switch as for any
        serving = self._supervisor.workers.get(current.name)
        if serving is None:
            raise WorkerStartError(f"model {current.name!r} is not being served here (enable it first)")
        full = await _share_cores(serving)
        try:
            candidate = await self._supervisor.start_candidate(target)
        except BaseException:
            await _set_threads(serving, full)
            raise
        try:
            await _set_threads(candidate, full and max(1, full // 2))
            checks = await self._check(candidate)
            failed = [check for check in checks if not check.ok]
            if failed:
                raise ActivationRefusedError(
                    f"version {target.version} of {target.name} failed {failed[0].name}: {failed[0].detail}",
                    checks,
                )
            if self._supervisor.workers.get(target.name) is not serving:
                raise WorkerStartError(f"{target.name} was disabled or removed while it was being checked")
            activated = self._models.activate(target.name, target.version)
        except BaseException:
            await self._supervisor.retire(candidate, drain_timeout_s=0)
            await _set_threads(serving, full)
            raise
        replaced = self._supervisor.switch(candidate)
        self._chains.probe_done(target.name, True, f"version {target.version} activated")
        retiring = asyncio.create_task(self._retire(replaced, candidate, full))
        self._retiring.add(retiring)  # keep a reference: the loop holds tasks only weakly
        retiring.add_done_callback(self._retiring.discard)
        log.info("%s now serves version %s (was %s)", target.name, target.version, current.version)
        return Activation(activated, current.version, checks)

    async def _retire(self, replaced: Worker, serving: Worker, full_threads: int) -> None:
        """Stop the replaced worker once idle, then give the one serving all the cores again."""
        await self._supervisor.retire(replaced, self._settings.server.drain_timeout_s)
        await _set_threads(serving, full_threads)

    async def _check(self, candidate: Worker) -> tuple[CheckOutcome, ...]:
        """The deep probe, then the prompt suite; stops at the first failure."""
        ok, detail = await probe_worker(candidate, self._settings.fallback)
        outcomes = [CheckOutcome("deep probe", ok, detail)]
        for check in self._settings.activation.checks if ok else ():
            outcome = await run_check(candidate, check, self._settings.activation.check_timeout_s)
            outcomes.append(outcome)
            if not outcome.ok:
                break
        return tuple(outcomes)
