"""vLLM's tool-call parser: chosen from the model's architecture or set per model, shown by the planner,
passed to vLLM, and refused with a one-line error when it is no parser name. vLLM itself is not installed
here: its argv stands for the real start."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import msgspec
import pytest

from api.openai.failover import feature_skip_reason
from appliance.engines.vllm.launch import vllm_argv
from appliance.engines.vllm.tool_parsers import check_tool_parser, tool_parser_for
from appliance.errors import InvalidRequestError
from appliance.planner import make_plan, spec_from_model
from appliance.protocol import ChatCompletionRequest, decode_request
from appliance.settings import Settings
from tests.api.console import run_appliance
from tests.appliance.model_specs import FIXTURES, awq_7b, gguf_7b, machine
from tests.appliance.test_vllm_worker import launch_for, model_info
from tests.awq_folders import write_awq_folder

AUTO_FLAGS = ["--enable-auto-tool-choice", "--tool-call-parser"]


@pytest.mark.parametrize(
    ("architecture", "setting", "parser"),
    [
        ("Qwen2ForCausalLM", None, "hermes"),
        ("Qwen3ForCausalLM", "auto", "hermes"),
        ("LlamaForCausalLM", None, "llama3_json"),
        ("MistralForCausalLM", None, "mistral"),
        ("GptOssForCausalLM", None, "openai"),
        ("SomethingNewForCausalLM", None, ""),
        ("SomethingNewForCausalLM", "pythonic", "pythonic"),
        ("Qwen2ForCausalLM", "none", ""),
    ],
)
def test_the_architecture_or_the_setting_chooses(architecture: str, setting: str | None, parser: str) -> None:
    """The model's own setting wins; `none` turns automatic calls off; else the architecture decides."""
    assert tool_parser_for(architecture, setting) == parser


@pytest.mark.parametrize("bad", ["", "Hermes!", "a b", "x" * 33, "../hermes"])
def test_a_name_that_is_no_parser_name_is_refused(bad: str) -> None:
    """Parser names are lower-case identifiers; anything else names the parameter."""
    with pytest.raises(InvalidRequestError) as refused:
        check_tool_parser(bad)
    assert refused.value.param == "tool_parser"
    assert "hermes" in refused.value.message


def test_vllm_is_started_with_the_parser_the_plan_shows() -> None:
    """An AWQ Qwen gets `--enable-auto-tool-choice --tool-call-parser hermes`; the plan's reason says so."""
    settings = Settings(home=Path("/var/lib/appliance"))
    qwen = msgspec.structs.replace(awq_7b(), tool_parser="hermes")
    (plan,) = make_plan(machine("h100_80gb"), [qwen], settings).models
    assert plan.tool_parser == "hermes"
    assert "tool calls: hermes parser" in plan.reason
    argv = vllm_argv(launch_for(plan, settings), "0.11.0")
    at = argv.index(AUTO_FLAGS[0])
    assert argv[at : at + 3] == [*AUTO_FLAGS, "hermes"]
    assert argv[0] == sys.executable


def test_without_a_parser_vllm_gets_no_auto_tool_flags() -> None:
    """No parser: no flags (vLLM would refuse to start with a wrong one), and the plan says why."""
    settings = Settings(home=Path("/var/lib/appliance"))
    (plan,) = make_plan(machine("h100_80gb"), [awq_7b()], settings).models
    assert plan.tool_parser == ""
    assert "no tool_choice auto" in plan.reason
    assert not set(AUTO_FLAGS) & set(vllm_argv(launch_for(plan, settings), "0.11.0"))


def test_a_registry_model_is_planned_with_its_architectures_parser() -> None:
    """The registry keeps the architecture from config.json and the admin's setting; GGUF gets none."""
    awq = dataclasses.replace(model_info("qwen", "/m/qwen"), architecture="Qwen2ForCausalLM")
    assert spec_from_model(awq).tool_parser == "hermes"
    assert spec_from_model(dataclasses.replace(awq, tool_parser="none")).tool_parser == ""
    gguf = dataclasses.replace(awq, format="gguf", architecture="Qwen2ForCausalLM")
    assert spec_from_model(gguf).tool_parser == ""


def test_admin_imports_sets_and_plans_a_parser(tmp_path: Path) -> None:
    """`models import --tool-parser`, `models set --tool-parser`, and `plan` for a GPU machine showing it."""
    folder = write_awq_folder(tmp_path / "tiny-awq")  # a LlamaForCausalLM: llama3_json by default
    imported = run_appliance("models", "import", str(folder), "--name", "tiny", "--tool-parser", "hermes")
    assert imported.returncode == 0, imported.stderr

    def planned() -> dict[str, object]:
        shown = run_appliance("plan", "--hardware", str(FIXTURES / "h100_80gb.json"), "--json")
        assert shown.returncode == 0, shown.stderr
        (model,) = json.loads(shown.stdout)["models"]
        assert isinstance(model, dict)
        return model

    assert (planned()["engine"], planned()["tool_parser"]) == ("vllm", "hermes")
    reset = run_appliance("models", "set", "tiny", "--tool-parser", "auto")
    assert reset.returncode == 0, reset.stderr
    assert "tool parser llama3_json (from its architecture" in reset.stdout
    assert planned()["tool_parser"] == "llama3_json"
    assert run_appliance("models", "set", "tiny", "--tool-parser", "none").returncode == 0
    assert planned()["tool_parser"] == ""
    table = run_appliance("plan", "--hardware", str(FIXTURES / "h100_80gb.json"))
    assert "no tool_choice auto" in table.stdout


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["tiny", "--tool-parser", "Bad!"], "tool parser 'Bad!'"),
        (["missing", "--tool-parser", "hermes"], "does not exist"),
        (["tiny"], "nothing to set"),
    ],
)
def test_models_set_refuses_in_one_line(tmp_path: Path, args: list[str], says: str) -> None:
    """A bad parser name, an unknown model or nothing to set: one `error:` line, exit 1, nothing changed."""
    folder = write_awq_folder(tmp_path / "tiny-awq")
    assert run_appliance("models", "import", str(folder), "--name", "tiny").returncode == 0
    refused = run_appliance("models", "set", *args)
    assert refused.returncode == 1
    (line,) = refused.stderr.splitlines()
    assert line.startswith("error: ")
    assert says in line
    listed = run_appliance("plan", "--hardware", str(FIXTURES / "h100_80gb.json"), "--json")
    assert json.loads(listed.stdout)["models"][0]["tool_parser"] == "llama3_json"


@pytest.mark.parametrize(
    ("tool_choice", "parser", "skipped"),
    [
        ("auto", "", True),
        (None, "", True),  # tools given, no choice: auto, as OpenAI defaults it
        ("auto", "hermes", False),
        ("required", "", False),  # guided decoding: no parser needed
        ({"type": "function", "function": {"name": "f"}}, "", False),
        ("none", "", False),
    ],
)
def test_a_route_skips_a_vllm_link_that_cannot_let_the_model_choose(
    tool_choice: object, parser: str, skipped: bool
) -> None:
    """`X-Fallback-Skipped-Reasons` says `no_tool_parser` for such a link; other links are tried as usual."""
    settings = Settings(home=Path("/var/lib/appliance"))
    spec = msgspec.structs.replace(awq_7b(), tool_parser=parser)
    (plan,) = make_plan(machine("h100_80gb"), [spec], settings).models
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    ask = [{"role": "user", "content": "hi"}]
    request: dict[str, object] = {"model": "m", "messages": ask, "tools": [tool]}
    if tool_choice is not None:
        request["tool_choice"] = tool_choice
    body = decode_request(json.dumps(request).encode(), ChatCompletionRequest)
    assert feature_skip_reason(plan, body) == ("no_tool_parser" if skipped else None)
    (cpu,) = make_plan(machine("cpu_only"), [gguf_7b()], settings).models
    assert feature_skip_reason(cpu, body) is None  # the llama.cpp worker grammar-constrains any model
