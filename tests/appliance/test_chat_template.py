"""Chat templates: the real SmolLM2 template renders, and templates are data that never run code."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.engines.llamacpp.chat_template import ChatTemplate
from appliance.errors import ChatTemplateMissingError, InvalidRequestError, ModelFileError
from appliance.gguf_info import read_gguf_info

MESSAGES = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def smollm_template(model_path: Path) -> ChatTemplate:
    """SmolLM2's own chat template, from its GGUF header."""
    source = read_gguf_info(model_path).chat_template
    assert source is not None
    return ChatTemplate(source, bos_token="<|im_start|>", eos_token="<|im_end|>")


def _template(source: str | None) -> ChatTemplate:
    return ChatTemplate(source, bos_token="<s>", eos_token="</s>")


def test_real_template_renders_chatml(smollm_template: ChatTemplate) -> None:
    """SmolLM2's template renders the user turn and ends with the assistant's generation prompt."""
    assert smollm_template.present
    text = smollm_template.render(MESSAGES)
    assert "<|im_start|>user\nHello there<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    assert text.startswith("<|im_start|>system\n")


def test_real_template_keeps_given_system_prompt(smollm_template: ChatTemplate) -> None:
    """With a system message first, SmolLM2's default system prompt is not added."""
    text = smollm_template.render(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Bye"},
        ]
    )
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    assert text.count("<|im_start|>system") == 1
    assert "SmolLM" not in text
    assert text.index("Hi") < text.index("Hello") < text.index("Bye")
    assert text.endswith("<|im_start|>assistant\n")


def test_bos_and_eos_tokens_are_passed(tmp_path: Path) -> None:
    """bos_token and eos_token are available to the template."""
    text = _template("{{ bos_token }}{{ messages[0]['content'] }}{{ eos_token }}").render(MESSAGES)
    assert text == "<s>Hello there</s>"


def test_missing_template_raises_on_render() -> None:
    """A model without a chat template is not `present` and rendering raises ChatTemplateMissingError."""
    template = _template(None)
    assert not template.present
    with pytest.raises(ChatTemplateMissingError) as caught:
        template.render(MESSAGES)
    assert caught.value.status_code == 400
    assert caught.value.code == "chat_template_missing"


def test_raise_exception_becomes_invalid_request() -> None:
    """`raise_exception(...)` in a template raises InvalidRequestError carrying the template's message."""
    template = _template(
        "{% if messages[0]['role'] != 'system' %}{{ raise_exception('roles must alternate') }}{% endif %}"
    )
    with pytest.raises(InvalidRequestError, match="roles must alternate") as caught:
        template.render(MESSAGES)
    assert caught.value.status_code == 400
    assert caught.value.param == "messages"


def test_template_that_does_not_compile_is_model_file_error() -> None:
    """A syntactically broken template is refused when it is loaded."""
    with pytest.raises(ModelFileError, match="does not compile"):
        _template("{% for m in messages %}{{ m }")


@pytest.mark.parametrize(
    "source",
    [
        "{{ self.__init__.__globals__.__builtins__.__import__('os').system('touch MARKER') }}",
        "{{ cycler.__init__.__globals__.os.popen('touch MARKER').read() }}",
        "{{ joiner.__init__.__globals__.os.system('touch MARKER') }}",
        "{{ namespace.__init__.__globals__.os.system('touch MARKER') }}",
        "{{ lipsum.__globals__['os'].system('touch MARKER') }}",
        "{% for c in ''.__class__.__mro__[1].__subclasses__() %}"
        "{% if c.__name__ == 'Popen' %}{{ c(['touch', 'MARKER']) }}{% endif %}{% endfor %}",
        "{{ raise_exception.__globals__['__builtins__']['__import__']('os').system('touch MARKER') }}",
    ],
)
def test_malicious_template_runs_no_code(tmp_path: Path, source: str) -> None:
    """CVE-2024-34359-style templates raise InvalidRequestError and never run their payload."""
    marker = tmp_path / "pwned"
    template = _template(source.replace("MARKER", str(marker)))
    with pytest.raises(InvalidRequestError):
        template.render(MESSAGES)
    assert not marker.exists()


def test_subclasses_listing_is_blocked() -> None:
    """Reaching `object.__subclasses__()` from a string raises InvalidRequestError, leaking nothing."""
    with pytest.raises(InvalidRequestError, match="unsafe") as caught:
        _template("{{ ''.__class__.__mro__[1].__subclasses__() }}").render(MESSAGES)
    assert "Popen" not in caught.value.message


def test_template_cannot_mutate_messages() -> None:
    """The immutable sandbox refuses to change the messages passed in."""
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(InvalidRequestError):
        _template("{% set _ = messages.append({'role': 'system'}) %}x").render(messages)
    with pytest.raises(InvalidRequestError):
        _template("{% set _ = messages[0].update({'role': 'system'}) %}x").render(messages)
    assert messages == [{"role": "user", "content": "hi"}]
