"""Model names become socket and store file names: every way in refuses a name that is no plain file name."""

from __future__ import annotations

from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient

from appliance.errors import InvalidRequestError
from appliance.registry.registry import open_registry
from appliance.store.store import ModelStore
from tests.api.console import run_appliance
from tests.api.test_console_gpu import gateway_app
from tests.gguf_files import write_tiny_gguf

HOSTILE = [
    "../escape",
    "a/b",
    "/abs",
    ".hidden",
    "-rf",
    "two words",
    "tab\tname",
    "line\nbreak",
    "[/x]",
    "[link=file:///etc/passwd]x",
    "naïve",  # look-alike Unicode
    "x" * 33,
    "",
]


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """A valid GGUF file with a plain name."""
    return write_tiny_gguf(tmp_path / "tiny.gguf")


@pytest.mark.parametrize("name", HOSTILE)
def test_registry_refuses_names_that_are_no_file_names(name: str, tiny: Path, tmp_path: Path) -> None:
    """The registry's add (every entry point ends there) refuses with param `name`; nothing is added."""
    from appliance.gguf_info import read_gguf_info

    registry = open_registry(tmp_path / "registry.db")
    with pytest.raises(InvalidRequestError, match="letters, digits") as refused:
        registry.models.add(tiny, read_gguf_info(tiny), name=name)
    assert refused.value.param == "name"
    with pytest.raises(InvalidRequestError):
        registry.models.check_names_free(name, ())
    assert registry.models.list() == []


@pytest.mark.parametrize("name", ["smollm2-135m", "qwen2.5-7b", "Q4_K_M", "x" * 32, "7b"])
def test_plain_names_are_accepted(name: str, tiny: Path, tmp_path: Path) -> None:
    """The names models really have pass."""
    from appliance.gguf_info import read_gguf_info

    registry = open_registry(tmp_path / "registry.db")
    assert registry.models.add(tiny, read_gguf_info(tiny), name=name).name == name


def test_versions_follow_the_same_rule(tiny: Path, tmp_path: Path) -> None:
    """A version starting with '.' or '-' is refused as well (they share the rule)."""
    from appliance.gguf_info import read_gguf_info

    registry = open_registry(tmp_path / "registry.db")
    registry.models.add(tiny, read_gguf_info(tiny), name="tiny")
    for version in ("..", ".2", "-2"):
        with pytest.raises(InvalidRequestError, match="letters, digits"):
            registry.models.add(tiny, read_gguf_info(tiny), name="tiny", version=version)


def test_store_import_refuses_before_any_file_is_written(tiny: Path, appliance_home: Path) -> None:
    """An encrypted import with a bad name writes nothing into the store."""
    appliance_home.mkdir(parents=True)
    registry = open_registry(appliance_home / "registry.db")
    store = ModelStore(appliance_home, registry)
    with pytest.raises(InvalidRequestError, match="model name"):
        store.import_gguf(tiny, name="../../escape")
    assert not store.folder.exists() or list(store.folder.iterdir()) == []


def _one_error_line(args: list[str]) -> str:
    done = run_appliance(*args)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: model name")
    return lines[0]


@pytest.mark.parametrize("command", ["add", "import"])
def test_cli_refuses_with_one_line(command: str, tiny: Path) -> None:
    """`appliance models add|import --name BAD`: one line with the reason, exit status not 0."""
    line = _one_error_line(["models", command, str(tiny), "--name", "../escape"])
    assert "'../escape'" in line


def test_cli_add_names_the_option_when_the_file_name_is_bad(tmp_path: Path) -> None:
    """A file whose stem is no plain name: the line says to give --name."""
    odd = write_tiny_gguf(tmp_path / "two words.gguf")
    assert "--name" in _one_error_line(["models", "add", str(odd)])


async def test_admin_api_refuses_with_an_openai_shaped_400(tiny: Path, appliance_home: Path) -> None:
    """POST /admin/models/import with a bad name: 400, OpenAI's error shape, param `name`, no job."""
    app, admin = gateway_app(appliance_home)
    headers = {"Authorization": f"Bearer {admin}"}
    async with AsyncTestClient(app) as client:
        for encrypt in (True, False):
            body = {"path": str(tiny), "name": "../escape", "encrypt": encrypt}
            response = await client.post("/admin/models/import", json=body, headers=headers)
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert error["type"] == "invalid_request_error"
            assert error["param"] == "name"
            assert "letters, digits" in error["message"]
        listed = await client.get("/admin/models", headers=headers)
    assert listed.json()["data"] == []
