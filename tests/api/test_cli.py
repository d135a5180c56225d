"""The `appliance` console script, run as a real process against a private APPLIANCE_HOME."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.api.console import APPLIANCE, run_appliance
from tests.gguf_files import write_tiny_gguf


def _assert_one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """Exit status 1, nothing on stdout, and stderr exactly one `error: ...` line with no traceback."""
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    assert "Traceback" not in result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert result.stderr.endswith("\n")
    return lines[0]


def test_console_script_is_installed() -> None:
    """The `appliance` entry point exists next to the interpreter and answers --help."""
    assert APPLIANCE.is_file()
    result = run_appliance("--help")
    assert result.returncode == 0, result.stderr
    for command in ("init", "keys", "models", "bootstrap"):
        assert command in result.stdout


def test_init_creates_home_settings_and_database(appliance_home: Path) -> None:
    """`init` creates the home, a default settings file and the registry, and can run again."""
    result = run_appliance("init")
    assert result.returncode == 0, result.stderr
    assert (appliance_home / "settings.toml").is_file()
    assert (appliance_home / "registry.db").is_file()
    assert str(appliance_home) in result.stdout
    again = run_appliance("init")
    assert again.returncode == 0, again.stderr


def test_models_add_non_gguf_is_one_error_line(tmp_path: Path) -> None:
    """Adding a file that is not GGUF exits 1 with one `error:` line saying so."""
    text = tmp_path / "readme.txt"
    text.write_text("not a model\n", encoding="utf-8")
    line = _assert_one_error_line(run_appliance("models", "add", str(text)))
    assert "not a GGUF" in line
    assert "readme.txt" in line


def test_bad_settings_is_one_error_line_naming_the_key(appliance_home: Path) -> None:
    """A wrongly typed setting makes every command exit 1 with one line naming `server.port`."""
    appliance_home.mkdir(parents=True)
    (appliance_home / "settings.toml").write_text('[server]\nport = "x"\n', encoding="utf-8")
    line = _assert_one_error_line(run_appliance("keys", "list"))
    assert "`server.port`" in line
    assert "settings.toml" in line


def test_unknown_setting_is_one_error_line(appliance_home: Path) -> None:
    """An unknown settings key exits 1 with one line naming it."""
    appliance_home.mkdir(parents=True)
    (appliance_home / "settings.toml").write_text("[server]\nportt = 1\n", encoding="utf-8")
    line = _assert_one_error_line(run_appliance("init"))
    assert "unknown key `server.portt`" in line


def test_keys_create_quiet_then_list_hides_secret() -> None:
    """`keys create --quiet` prints only the key; `keys list` shows its id, name, role, never the secret."""
    created = run_appliance("keys", "create", "--name", "ci-bot", "--role", "admin", "--quiet")
    assert created.returncode == 0, created.stderr
    lines = created.stdout.splitlines()
    assert len(lines) == 1
    prefix, key_id, secret = lines[0].split("-", 2)
    assert prefix == "apl"
    assert len(key_id) == 12
    assert secret

    listed = run_appliance("keys", "list")
    assert listed.returncode == 0, listed.stderr
    rows = [row for row in listed.stdout.splitlines() if row.startswith(key_id)]
    assert len(rows) == 1
    assert "admin" in rows[0]
    assert "ci-bot" in rows[0]
    assert "active" in rows[0]
    assert secret not in listed.stdout
    assert lines[0] not in listed.stdout


def test_keys_create_then_revoke() -> None:
    """`keys create` shows id, role, name and key once; `keys revoke ID` then lists the key as revoked."""
    created = run_appliance("keys", "create", "--name", "human")
    assert created.returncode == 0, created.stderr
    key = next(line for line in created.stdout.splitlines() if line.startswith("apl-"))
    key_id = key.split("-", 2)[1]
    assert created.stdout.startswith(key_id)
    assert "user" in created.stdout
    assert "human" in created.stdout

    revoked = run_appliance("keys", "revoke", key_id)
    assert revoked.returncode == 0, revoked.stderr
    assert key_id in revoked.stdout
    listed = run_appliance("keys", "list").stdout
    row = next(r for r in listed.splitlines() if r.startswith(key_id))
    assert "revoked" in row
    assert key not in listed


def test_keys_revoke_unknown_is_one_error_line() -> None:
    """Revoking an id that does not exist exits 1 with one `error:` line naming the id."""
    line = _assert_one_error_line(run_appliance("keys", "revoke", "deadbeef0000"))
    assert "deadbeef0000" in line


def test_models_add_real_model_then_list_and_clashes(model_path: Path, tmp_path: Path) -> None:
    """The real model added as `m` alias `a` is listed with both; reusing either exits 1 with one line."""
    added = run_appliance("models", "add", str(model_path), "--name", "m", "--alias", "a")
    assert added.returncode == 0, added.stderr
    assert "registered m" in added.stdout
    assert "llama" in added.stdout
    assert "Q4_1" in added.stdout
    assert "chat template: yes" in added.stdout

    listed = run_appliance("models", "list")
    assert listed.returncode == 0, listed.stderr
    rows = listed.stdout.splitlines()
    assert len(rows) == 2
    assert rows[1].split() == ["m", "1", "a", "llama", "Q4_1", "98.4", "8192", "enabled"]

    tiny = write_tiny_gguf(tmp_path / "tiny.gguf")
    line = _assert_one_error_line(run_appliance("models", "add", str(tiny), "--name", "m"))
    assert "'m'" in line
    line = _assert_one_error_line(
        run_appliance("models", "add", str(tiny), "--name", "other", "--alias", "a")
    )
    assert "'a'" in line

    template = tmp_path / "chat.jinja"
    template.write_text("{{ messages }}", encoding="utf-8")
    with_template = run_appliance("models", "add", str(tiny), "--name", "t", "--chat-template", str(template))
    assert with_template.returncode == 0, with_template.stderr
    assert "chat template: yes" in with_template.stdout
    names = [row.split()[0] for row in run_appliance("models", "list").stdout.splitlines()[1:]]
    assert names == ["m", "t"]


def test_models_enable_disable_and_alias(tmp_path: Path) -> None:
    """`models add --disabled`, `enable`, `disable` and `alias --add/--remove` change the registry (what a
    running gateway follows) and say so; a wrong alias or nothing to change is one error line."""
    tiny = write_tiny_gguf(tmp_path / "tiny.gguf")
    added = run_appliance("models", "add", str(tiny), "--name", "t", "--disabled")
    assert "disabled until `appliance models enable`" in added.stdout, added.stderr

    def row() -> list[str]:
        return run_appliance("models", "list").stdout.splitlines()[1].split()

    assert row()[-1] == "disabled"
    assert "enabled t" in run_appliance("models", "enable", "t").stdout
    assert row()[-1] == "enabled"
    aliased = run_appliance("models", "alias", "t", "--add", "x", "--add", "y")
    assert "t: aliases x, y" in aliased.stdout, aliased.stderr
    assert row()[2] == "x,y"
    assert "t: aliases y" in run_appliance("models", "alias", "x", "--remove", "x").stdout
    assert "has no alias 'z'" in _assert_one_error_line(
        run_appliance("models", "alias", "t", "--remove", "z")
    )
    assert "nothing to change" in _assert_one_error_line(run_appliance("models", "alias", "t"))
    assert "disabled t" in run_appliance("models", "disable", "t").stdout
    assert row()[-1] == "disabled"
    assert "does not exist" in _assert_one_error_line(run_appliance("models", "enable", "nope"))
