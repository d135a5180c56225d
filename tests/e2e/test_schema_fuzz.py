"""Schemathesis over the OpenAPI document a real appliance serves: every route, with a user key and an admin
key, a bounded number of examples each; no 5xx and no answer that the document does not describe."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import hypothesis.errors
import pytest
import requests
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Ok

from api.openapi import EVENT_STREAMS
from tests.e2e.server import RunningAppliance, start_appliance

EXAMPLES = 40
"""Per route, key and mode: about a minute on 2 cores for the whole document (some 4,000 requests)."""
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Small answers keep generation cheap: a larger max_tokens is refused (400) before any engine runs.
SETTINGS = "[limits]\nmax_tokens = 8\n"


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[RunningAppliance]:
    """An appliance of its own: the admin routes may change it (keys, models) while they are fuzzed."""
    running = start_appliance(tmp_path_factory.mktemp("fuzz") / "home", model_path, settings=SETTINGS)
    yield running
    running.stop()
    assert "Traceback" not in running.log, running.log


def _document(appliance: RunningAppliance) -> dict[str, Any]:
    response = httpx.get(f"{appliance.base_url}/schema/openapi.json", headers=appliance.headers(), timeout=30)
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def test_the_document_is_served_behind_the_key_and_describes_the_openai_routes(
    fuzzed: RunningAppliance,
) -> None:
    """/schema/openapi.json needs a key like every route, has the request bodies of the OpenAI routes,
    and documents the admin event stream as server-sent events."""
    assert httpx.get(f"{fuzzed.base_url}/schema/openapi.json", timeout=30).status_code == 401
    document = _document(fuzzed)
    body = document["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChatCompletionRequest"
    }
    assert "messages" in document["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    events = document["paths"]["/admin/events"]["get"]["responses"]["200"]["content"]
    assert list(events) == ["text/event-stream"]


@pytest.mark.parametrize("role", ["user", "admin"])
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_route_answers_as_documented_and_never_5xx(
    fuzzed: RunningAppliance, role: str, mode: GenerationMode
) -> None:
    """Each operation gets EXAMPLES generated requests; every answer passes the checks."""
    schema = schemathesis.openapi.from_dict(_document(fuzzed))
    headers = fuzzed.headers(fuzzed.admin_key if role == "admin" else fuzzed.user_key)
    session = requests.Session()
    results = list(schema.get_all_operations())
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) == len(results)  # every operation in the document could be read
    assert len(operations) >= 10
    # An event stream never ends, so no generated request to it could be answered in full; its
    # documented content type is asserted below and its events in tests/api/test_admin_events.py.
    for operation in (op for op in operations if op.path not in EVENT_STREAMS):

        @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
        @hypothesis.settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(hypothesis.HealthCheck),
            phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        )
        def run(case: schemathesis.Case[Any]) -> None:
            response = case.call(base_url=fuzzed.base_url, session=session, headers=headers, timeout=60)
            # Readiness answers 503 by design when a route has no engine (admin fuzzing creates such
            # routes); that answer is documented and checked like any other, just not counted as a crash.
            checks = CHECKS[1:] if case.operation.path == "/health/ready" else CHECKS
            case.validate_response(response, checks=checks)

        try:
            run()
        except hypothesis.errors.Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # a route with no input has no invalid input either
    # Readiness may rightly drop after admin fuzzing (a fuzzed route with no engine is served canned), so
    # the check is that the model itself still answers.
    chat = {"model": "default", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    answer = httpx.post(
        f"{fuzzed.base_url}/v1/chat/completions", json=chat, headers=fuzzed.headers(), timeout=60
    )
    assert answer.status_code == 200, answer.text
