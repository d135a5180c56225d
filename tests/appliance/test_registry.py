"""The registry: migrations, API keys, the audit log and model names."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from appliance.errors import AuthenticationError, ConflictError, ModelNotFoundError, NotFoundError
from appliance.gguf_info import GgufInfo
from appliance.registry.keys import KEY_PREFIX, Role
from appliance.registry.registry import Registry, open_registry

FAKE_GGUF = GgufInfo(
    architecture="llama",
    context_length=8192,
    quantization="Q4_1",
    chat_template="{{ messages }}",
    size_bytes=1234,
    sha256="ab" * 32,
    display_name="fake",
)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Where this test's registry database lives."""
    return tmp_path / "registry" / "registry.db"


@pytest.fixture
def registry(db_path: Path) -> Registry:
    """A freshly migrated registry."""
    return open_registry(db_path)


def test_migration_creates_tables_and_stamps_version(registry: Registry, db_path: Path) -> None:
    """Opening a new database creates models, api_keys and audit_events, stamped at the head, 0006."""
    engine = create_engine(f"sqlite:///{db_path}")
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"models", "api_keys", "audit_events", "alembic_version"} <= tables
    with sqlite3.connect(db_path) as connection:
        versions = connection.execute("SELECT version_num FROM alembic_version").fetchall()
    assert versions == [("0008",)]


def test_migrated_columns_match_schema(registry: Registry, db_path: Path) -> None:
    """The migrated api_keys table stores a secret hash column and no secret column."""
    engine = create_engine(f"sqlite:///{db_path}")
    try:
        columns = {column["name"] for column in inspect(engine).get_columns("api_keys")}
    finally:
        engine.dispose()
    assert columns == {"id", "name", "role", "secret_sha256", "created_at", "last_used_at", "revoked_at"}


def test_opening_twice_is_idempotent_and_keeps_data(db_path: Path) -> None:
    """Reopening a migrated database changes nothing and keeps keys, models and audit events."""
    first = open_registry(db_path)
    created = first.keys.create("ci", Role.USER)
    first.models.add(Path("/models/fake.gguf"), FAKE_GGUF, name="fake", aliases=("default",))
    first.audit.record("keys.create", outcome="success", target=created.info.id)

    second = open_registry(db_path)
    assert [key.id for key in second.keys.list()] == [created.info.id]
    assert second.keys.authenticate(created.secret).id == created.info.id
    assert second.models.resolve("default").name == "fake"
    assert [event.action for event in second.audit.recent()] == ["keys.create"]
    with sqlite3.connect(db_path) as connection:
        versions = connection.execute("SELECT version_num FROM alembic_version").fetchall()
    assert versions == [("0008",)]


def test_created_key_has_documented_shape(registry: Registry) -> None:
    """A new key reads `apl-<12 hex id>-<urlsafe secret>` and its info carries name and role."""
    created = registry.keys.create("alice", Role.ADMIN)
    prefix, key_id, secret = created.secret.split("-", 2)
    assert prefix == KEY_PREFIX
    assert key_id == created.info.id
    assert len(key_id) == 12
    assert all(c in "0123456789abcdef" for c in key_id)
    assert len(secret) >= 43
    assert created.info.name == "alice"
    assert created.info.role is Role.ADMIN
    assert created.info.revoked_at is None


def test_keys_are_unique(registry: Registry) -> None:
    """Two keys never share an id or a secret."""
    first = registry.keys.create("a", Role.USER)
    second = registry.keys.create("a", Role.USER)
    assert first.info.id != second.info.id
    assert first.secret != second.secret


def test_authenticate_returns_key_info(registry: Registry) -> None:
    """The full secret authenticates to its key and records when it was used."""
    created = registry.keys.create("bob", Role.USER)
    info = registry.keys.authenticate(created.secret)
    assert info.id == created.info.id
    assert info.name == "bob"
    assert info.role is Role.USER
    assert info.last_used_at is not None
    listed = {key.id: key for key in registry.keys.list()}
    assert listed[created.info.id].last_used_at is not None


def test_revoked_key_fails_and_stays_listed(registry: Registry) -> None:
    """A revoked key no longer authenticates but is still listed, marked revoked."""
    keep = registry.keys.create("keep", Role.USER)
    gone = registry.keys.create("gone", Role.ADMIN)
    revoked = registry.keys.revoke(gone.info.id)
    assert revoked.revoked_at is not None
    with pytest.raises(AuthenticationError, match="revoked"):
        registry.keys.authenticate(gone.secret)
    assert registry.keys.authenticate(keep.secret).id == keep.info.id
    listed = {key.id: key for key in registry.keys.list()}
    assert set(listed) == {keep.info.id, gone.info.id}
    assert listed[gone.info.id].revoked_at is not None
    assert listed[keep.info.id].revoked_at is None


def test_revoke_unknown_key_is_not_found(registry: Registry) -> None:
    """Revoking an id that does not exist raises NotFoundError."""
    with pytest.raises(NotFoundError):
        registry.keys.revoke("000000000000")


def test_secret_is_never_stored(registry: Registry, db_path: Path) -> None:
    """Neither the full key nor its secret part appears anywhere in the database files."""
    created = registry.keys.create("carol", Role.ADMIN)
    registry.keys.authenticate(created.secret)
    secret_part = created.secret.split("-", 2)[2]
    with sqlite3.connect(db_path) as connection:
        rows = connection.execute("SELECT * FROM api_keys").fetchall()
    assert len(rows) == 1
    stored = " ".join(str(value) for value in rows[0])
    assert created.info.id in stored
    assert secret_part not in stored
    raw = b"".join(p.read_bytes() for p in db_path.parent.iterdir() if p.name.startswith(db_path.name))
    assert created.info.id.encode() in raw
    assert secret_part.encode() not in raw
    assert created.secret.encode() not in raw


def test_wrong_secret_with_valid_id_fails(registry: Registry) -> None:
    """A known id with the wrong secret is refused."""
    created = registry.keys.create("dave", Role.USER)
    secret = created.secret.split("-", 2)[2]
    wrong = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    with pytest.raises(AuthenticationError):
        registry.keys.authenticate(f"{KEY_PREFIX}-{created.info.id}-{wrong}")
    with pytest.raises(AuthenticationError):
        registry.keys.authenticate(f"{KEY_PREFIX}-{created.info.id}-")


def test_secret_of_another_key_fails(registry: Registry) -> None:
    """One key's secret under another key's id is refused."""
    first = registry.keys.create("one", Role.USER)
    second = registry.keys.create("two", Role.USER)
    with pytest.raises(AuthenticationError):
        registry.keys.authenticate(f"{KEY_PREFIX}-{first.info.id}-{second.secret.split('-', 2)[2]}")


@pytest.mark.parametrize(
    "presented",
    ["", "apl", "apl-", "apl--", "Bearer x", "apl-nothex-secret", "xyz-000000000000-secret", "-----"],
)
def test_malformed_key_fails(registry: Registry, presented: str) -> None:
    """Strings that are not a well-formed live key raise AuthenticationError."""
    registry.keys.create("someone", Role.USER)
    with pytest.raises(AuthenticationError):
        registry.keys.authenticate(presented)


def test_key_with_wrong_prefix_fails(registry: Registry) -> None:
    """A real id and secret behind a different prefix are refused."""
    created = registry.keys.create("erin", Role.USER)
    with pytest.raises(AuthenticationError):
        registry.keys.authenticate("sk" + created.secret.removeprefix(KEY_PREFIX))


def test_key_list_is_oldest_first(registry: Registry) -> None:
    """Keys are listed in the order they were created."""
    ids = [registry.keys.create(f"k{i}", Role.USER).info.id for i in range(3)]
    assert [key.id for key in registry.keys.list()] == ids


def test_audit_recent_is_newest_first(registry: Registry) -> None:
    """recent() returns events newest first, with every field recorded, and honours its limit."""
    actor = registry.keys.create("admin", Role.ADMIN)
    registry.audit.record("first", outcome="success")
    registry.audit.record("second", outcome="denied", target="t", detail="d")
    registry.audit.record("third", outcome="failure", actor_key_id=actor.info.id, target="x")
    events = registry.audit.recent()
    assert [event.action for event in events] == ["third", "second", "first"]
    assert events[0].actor_key_id == actor.info.id
    assert (events[0].outcome, events[0].target) == ("failure", "x")
    assert (events[1].outcome, events[1].target, events[1].detail) == ("denied", "t", "d")
    assert events[2].actor_key_id is None
    assert [event.action for event in registry.audit.recent(limit=2)] == ["third", "second"]


def test_model_add_and_resolve_by_name_and_alias(registry: Registry, tmp_path: Path) -> None:
    """A model resolves by its name and each alias, with its header facts."""
    path = tmp_path / "m.gguf"
    added = registry.models.add(path, FAKE_GGUF, name="smol", aliases=("default", "tiny"))
    assert added.public_names == ("smol", "default", "tiny")
    for name in ("smol", "default", "tiny"):
        model = registry.models.resolve(name)
        assert model.id == added.id
        assert model.name == "smol"
    model = registry.models.resolve("tiny")
    assert model.path == path.resolve()
    assert model.architecture == "llama"
    assert model.quantization == "Q4_1"
    assert model.context_length == 8192
    assert model.sha256 == FAKE_GGUF.sha256
    assert model.has_chat_template is True
    assert model.status == "enabled"
    assert registry.models.enabled() == [model]


def test_model_without_template_is_marked(registry: Registry) -> None:
    """A GGUF without a chat template is stored with has_chat_template false, override kept."""
    info = replace(FAKE_GGUF, chat_template=None)
    registry.models.add(Path("/m/a.gguf"), info, name="a")
    registry.models.add(Path("/m/b.gguf"), info, name="b", chat_template_override="{{ x }}")
    a, b = registry.models.list()
    assert (a.has_chat_template, a.chat_template_override) == (False, None)
    assert (b.has_chat_template, b.chat_template_override) == (False, "{{ x }}")


@pytest.mark.parametrize(
    ("name", "aliases"),
    [
        ("first", ()),
        ("other", ("first",)),
        ("other", ("alias",)),
        ("alias", ()),
    ],
)
def test_name_or_alias_clash_is_conflict(registry: Registry, name: str, aliases: tuple[str, ...]) -> None:
    """A name or alias already used as a name or alias raises ConflictError and adds nothing."""
    registry.models.add(Path("/m/first.gguf"), FAKE_GGUF, name="first", aliases=("alias",))
    with pytest.raises(ConflictError, match="already used"):
        registry.models.add(Path("/m/second.gguf"), FAKE_GGUF, name=name, aliases=aliases)
    assert [m.name for m in registry.models.list()] == ["first"]


def test_unknown_model_is_not_found(registry: Registry) -> None:
    """Resolving an unknown name raises ModelNotFoundError pointing at the `model` parameter."""
    registry.models.add(Path("/m/first.gguf"), FAKE_GGUF, name="first", aliases=("alias",))
    with pytest.raises(ModelNotFoundError) as caught:
        registry.models.resolve("missing")
    assert caught.value.param == "model"
    assert caught.value.status_code == 404
    assert "missing" in caught.value.message


def test_reads_served_from_memory_still_see_every_commit_of_another_process(db_path: Path) -> None:
    """Keys and the model list are kept in memory until the database changes: a revocation or a model added
    through another connection (the CLI's, here a second registry on the same file) shows at once."""
    gateway, cli = open_registry(db_path), open_registry(db_path)
    created = gateway.keys.create("app", Role.USER)
    assert gateway.keys.authenticate(created.secret).id == created.info.id
    assert gateway.keys.authenticate(created.secret).id == created.info.id  # served from memory
    assert gateway.models.list() == []
    cli.keys.revoke(created.info.id)
    with pytest.raises(AuthenticationError, match="revoked"):
        gateway.keys.authenticate(created.secret)
    cli.models.add(Path("/models/a.gguf"), FAKE_GGUF, name="a")
    assert [model.name for model in gateway.models.list()] == ["a"]
    assert gateway.models.resolve("a").name == "a"
    cli.models.remove("a")
    with pytest.raises(ModelNotFoundError):
        gateway.models.resolve("a")


def test_a_cached_key_still_checks_its_secret_and_records_use(registry: Registry) -> None:
    """A second authentication from memory still refuses a wrong secret, and last_used is written."""
    created = registry.keys.create("app", Role.USER)
    first = registry.keys.authenticate(created.secret)
    assert first.last_used_at is not None
    assert registry.keys.list()[0].last_used_at is not None
    with pytest.raises(AuthenticationError, match="Incorrect"):
        registry.keys.authenticate(created.secret[:-2] + "xx")
    unknown = f"{KEY_PREFIX}-000000000000-{created.secret.rsplit('-', 1)[1]}"
    with pytest.raises(AuthenticationError, match="Incorrect"):
        registry.keys.authenticate(unknown)


def test_a_disabled_model_is_not_found_for_requests_exactly_as_an_unknown_one(registry: Registry) -> None:
    """`serving` finds only enabled models; a disabled one raises the very error of a name never
    registered, while `resolve` (the admin's) still finds it."""
    registry.models.add(Path("/m/first.gguf"), FAKE_GGUF, name="first", aliases=("alias",))
    assert registry.models.serving("alias").name == "first"
    registry.models.set_status("first", "disabled")
    for name in ("first", "alias"):
        with pytest.raises(ModelNotFoundError) as disabled:
            registry.models.serving(name)
        with pytest.raises(ModelNotFoundError) as unknown:
            registry.models.serving("never")
        assert disabled.value.message == unknown.value.message.replace("never", name)
        assert (disabled.value.param, disabled.value.code) == (unknown.value.param, unknown.value.code)
    assert registry.models.resolve("first").status == "disabled"


def test_a_model_added_disabled_is_listed_but_not_enabled(registry: Registry) -> None:
    """`status="disabled"` registers a model no gateway serves until it is enabled."""
    added = registry.models.add(Path("/m/a.gguf"), FAKE_GGUF, name="a", status="disabled")
    assert added.status == "disabled"
    assert registry.models.enabled() == []
    assert registry.models.set_status("a", "enabled").status == "enabled"
    assert [m.name for m in registry.models.enabled()] == ["a"]


def test_aliases_are_set_on_every_version_and_stay_unique(registry: Registry) -> None:
    """set_aliases replaces a model's aliases (every version's); one another model uses is refused."""
    registry.models.add(Path("/m/a.gguf"), FAKE_GGUF, name="a", aliases=("old",))
    registry.models.add(Path("/m/a2.gguf"), FAKE_GGUF, name="a", version="2")
    registry.models.add(Path("/m/b.gguf"), FAKE_GGUF, name="b", aliases=("bee",))
    assert registry.models.set_aliases("a", ("new", "other")).aliases == ("new", "other")
    assert [v.aliases for v in registry.models.versions("a")] == [("new", "other"), ("new", "other")]
    assert registry.models.resolve("new").name == "a"
    with pytest.raises(ModelNotFoundError):
        registry.models.resolve("old")
    for taken in ("b", "bee"):
        with pytest.raises(ConflictError, match="already used by model 'b'"):
            registry.models.set_aliases("a", (taken,))
    with pytest.raises(ConflictError, match="must all differ"):
        registry.models.set_aliases("a", ("a",))
    with pytest.raises(ModelNotFoundError):
        registry.models.set_aliases("missing", ("x",))
    assert registry.models.set_aliases("a", ()).aliases == ()
