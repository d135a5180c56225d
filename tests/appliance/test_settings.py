"""Settings: defaults, typed values, and one-line errors that name the offending key."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.atomic_files import atomic_write_text
from appliance.default_settings import DEFAULT_SETTINGS_TEXT, write_default_settings
from appliance.errors import SettingsError
from appliance.settings import (
    SETTINGS_FILE,
    LimitSettings,
    ServerSettings,
    Settings,
    WorkerSettings,
    load_settings,
)


def _write(home: Path, text: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / SETTINGS_FILE).write_text(text, encoding="utf-8")


def _error_for(home: Path, text: str) -> str:
    _write(home, text)
    with pytest.raises(SettingsError) as caught:
        load_settings(home)
    return caught.value.message


def test_missing_file_gives_defaults(appliance_home: Path) -> None:
    """Without settings.toml every section has its documented default and `home` is the directory given."""
    settings = load_settings(appliance_home)
    assert settings.server == ServerSettings()
    assert settings.server.host == "127.0.0.1"
    assert settings.server.port == 8080
    assert settings.limits == LimitSettings()
    assert settings.workers == WorkerSettings()
    assert settings.home == appliance_home
    assert settings.database_path == appliance_home / "registry.db"
    assert settings.run_dir == appliance_home / "run"


def test_values_are_read_and_others_keep_defaults(appliance_home: Path) -> None:
    """Values in the file override defaults; keys left out keep theirs."""
    _write(
        appliance_home,
        '[server]\nhost = "0.0.0.0"\nport = 9000\n\n[limits]\nrequest_timeout_s = 12.5\n\n'
        "[workers]\nthreads = 3\ncontext_length = 2048\n",
    )
    settings = load_settings(appliance_home)
    assert settings.server == ServerSettings(host="0.0.0.0", port=9000)
    assert settings.limits.request_timeout_s == 12.5
    assert settings.limits.max_body_bytes == LimitSettings().max_body_bytes
    assert settings.workers.threads == 3
    assert settings.workers.context_length == 2048
    assert settings.workers.stop_timeout_s == WorkerSettings().stop_timeout_s
    assert settings.home == appliance_home


def test_settings_are_frozen(appliance_home: Path) -> None:
    """Settings cannot be changed after they are read."""
    settings = load_settings(appliance_home)
    with pytest.raises(AttributeError):
        settings.server.port = 1  # type: ignore[misc]


def test_default_settings_file_round_trips(appliance_home: Path) -> None:
    """The written default file parses to exactly the built-in defaults and is not overwritten later."""
    path = write_default_settings(appliance_home)
    assert path == appliance_home / SETTINGS_FILE
    assert path.read_text(encoding="utf-8") == DEFAULT_SETTINGS_TEXT
    assert load_settings(appliance_home) == Settings(home=appliance_home)
    path.write_text("[server]\nport = 1234\n", encoding="utf-8")
    write_default_settings(appliance_home)
    assert load_settings(appliance_home).server.port == 1234


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("portt = 1\n", "portt"),
        ("[nope]\nx = 1\n", "nope"),
        ("[server]\nportt = 1\n", "server.portt"),
        ("[workers]\nthread = 2\n", "workers.thread"),
        ("[limits]\nmax_body = 10\n", "limits.max_body"),
    ],
)
def test_unknown_key_is_named(appliance_home: Path, text: str, key: str) -> None:
    """An unknown top-level or nested key raises SettingsError naming its full dotted path."""
    message = _error_for(appliance_home, text)
    assert f"unknown key `{key}`" in message
    assert str(appliance_home / SETTINGS_FILE) in message


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ('[server]\nport = "x"\n', "server.port", "Expected `int`, got `str`"),
        ("[server]\nport = 1.5\n", "server.port", "Expected `int`, got `float`"),
        ("[server]\nhost = 1\n", "server.host", "Expected `str`, got `int`"),
        ('[limits]\nrequest_timeout_s = "slow"\n', "limits.request_timeout_s", "Expected `float`, got `str`"),
        ("[workers]\nthreads = true\n", "workers.threads", "Expected `int`, got `bool`"),
        ("server = 3\n", "server", "Expected `object`, got `int`"),
    ],
)
def test_wrong_type_names_the_key(appliance_home: Path, text: str, key: str, expected: str) -> None:
    """A value of the wrong type raises SettingsError saying what was expected and for which key."""
    message = _error_for(appliance_home, text)
    assert f"{expected} for key `{key}`" in message


@pytest.mark.parametrize(
    "text",
    [
        "portt = 1\n",
        "[server]\nportt = 1\n",
        '[server]\nport = "x"\n',
        "x = [\n",
        "[server\n",
        'home = "/elsewhere"\n',
    ],
)
def test_error_message_is_one_line(appliance_home: Path, text: str) -> None:
    """Every settings error, syntax errors included, is a single line that names the file."""
    message = _error_for(appliance_home, text)
    assert message
    assert "\n" not in message
    assert "\r" not in message
    assert message.startswith(str(appliance_home / SETTINGS_FILE))


@pytest.mark.parametrize("text", ['home = "/elsewhere"\n', 'home = ""\n', "home = 3\n"])
def test_home_key_in_file_is_refused(appliance_home: Path, text: str) -> None:
    """`home` comes from APPLIANCE_HOME only: setting it in the file is an error naming `home`."""
    message = _error_for(appliance_home, text)
    assert "`home`" in message


def test_atomic_write_replaces_content_and_leaves_no_temp_file(tmp_path: Path) -> None:
    """atomic_write_text creates missing folders, replaces old content, and leaves only the target file."""
    target = tmp_path / "deep" / "folder" / "file.txt"
    atomic_write_text(target, "first\n")
    assert target.read_text(encoding="utf-8") == "first\n"
    atomic_write_text(target, "second ✓\n")
    assert target.read_text(encoding="utf-8") == "second ✓\n"
    assert [p.name for p in target.parent.iterdir()] == ["file.txt"]
    assert target.stat().st_mode & 0o777 == 0o600


def test_atomic_write_failure_keeps_old_content(tmp_path: Path) -> None:
    """A write that fails midway leaves the old file untouched and removes its temp file."""
    target = tmp_path / "file.txt"
    atomic_write_text(target, "intact\n")
    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(target, "broken \udc80 surrogate")
    assert target.read_text(encoding="utf-8") == "intact\n"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]
