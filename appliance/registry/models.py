"""Registered models: names, aliases and what their files say about them."""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from appliance.errors import ConflictError, InvalidRequestError, ModelNotFoundError
from appliance.gguf_info import GgufInfo
from appliance.registry.changes import DataVersion, ReadCache
from appliance.registry.names import check_model_name, check_version
from appliance.registry.schema import ModelRow, utc_now
from appliance.settings_residency import check_keep_alive

MAX_ALIAS_CHARS = 128


@dataclass(frozen=True)
class ModelInfo:
    """A registry entry as the rest of the appliance sees it."""

    id: int
    name: str
    aliases: tuple[str, ...]
    format: str
    architecture: str
    quantization: str
    path: Path
    sha256: str
    size_bytes: int
    context_length: int
    has_chat_template: bool
    chat_template_override: str | None
    status: str
    created: int
    """Registration time, Unix seconds (OpenAI's `created`)."""
    version: str = "1"
    active: bool = True
    """Whether this version is the one its name serves."""
    tool_parser: str | None = None
    """vLLM's tool-call parser as set for this model (None: follow the architecture)."""
    keep_alive_s: float | None = None
    """Idle seconds before it is unloaded (-1 pinned, 0 after each request); None: `[residency]`'s."""

    @property
    def public_names(self) -> tuple[str, ...]:
        """Every name a request may use for this model."""
        return (self.name, *self.aliases)


def _info(row: ModelRow) -> ModelInfo:
    return ModelInfo(
        id=row.id,
        name=row.name,
        aliases=tuple(row.aliases),
        format=row.format,
        architecture=row.architecture,
        quantization=row.quantization,
        path=Path(row.path),
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        context_length=row.context_length,
        has_chat_template=row.has_chat_template,
        chat_template_override=row.chat_template_override,
        status=row.status,
        created=int(row.created_at.timestamp()),
        version=row.version,
        active=row.active,
        tool_parser=row.tool_parser,
        keep_alive_s=row.keep_alive_s,
    )


class ModelRegistry:
    """Adds, finds and lists models; names and aliases are unique across all models.

    A name may have several versions (rows); exactly one is active, and everything that serves or lists
    models sees only active versions. Activation itself (load beside, check, switch) is the gateway's.
    """

    def __init__(self, sessions: sessionmaker[Session], changes: DataVersion | None = None) -> None:
        self._sessions = sessions
        self._cache: ReadCache[tuple[ModelInfo, ...]] | None = ReadCache(changes) if changes else None
        """The active models, read once per change of the database: every request resolves its model."""

    def add(
        self,
        path: Path,
        gguf: GgufInfo,
        *,
        name: str,
        aliases: tuple[str, ...] = (),
        chat_template_override: str | None = None,
        version: str | None = None,
        model_format: str = "gguf",
        tool_parser: str | None = None,
        status: str = "enabled",
    ) -> ModelInfo:
        """Register a GGUF file under `name` and `aliases`; a taken name raises ConflictError.

        With `version`, a file for a name that exists becomes a new, inactive version of it (it keeps the
        name's aliases and status); activating it is a separate step. `status` is a new model's.
        """
        wanted = {name, *aliases}
        if len(wanted) != 1 + len(aliases):
            raise ConflictError("a model's name and aliases must all differ", param="alias")
        check_model_name(name)  # every way in (CLI, admin API, store import) reaches this one check
        if version is not None:
            check_version(version)
        with self._sessions.begin() as session:
            same_name = list(session.scalars(select(ModelRow).where(ModelRow.name == name)))
            for existing in session.scalars(select(ModelRow).where(ModelRow.name != name)):
                taken = wanted & {existing.name, *existing.aliases}
                if taken:
                    raise ConflictError(
                        f"name {sorted(taken)[0]!r} is already used by model {existing.name!r}", param="name"
                    )
            if same_name and version is None:
                raise ConflictError(
                    f"name {name!r} is already used by model {name!r} (give a version to add a new one)",
                    param="name",
                )
            if any(row.version == version for row in same_name):
                raise ConflictError(f"model {name!r} already has a version {version!r}", param="version")
            active = next((row for row in same_name if row.active), None)
            if active is not None and aliases and set(aliases) != set(active.aliases):
                raise ConflictError(
                    f"a new version keeps the aliases of {name!r} ({', '.join(active.aliases) or 'none'})",
                    param="alias",
                )
            row = ModelRow(
                name=name,
                version=version or "1",
                active=active is None,
                activated_at=utc_now() if active is None else None,
                aliases=list(active.aliases) if active is not None else list(aliases),
                format=model_format,
                architecture=gguf.architecture,
                quantization=gguf.quantization,
                path=str(path.resolve()),
                sha256=gguf.sha256,
                size_bytes=gguf.size_bytes,
                context_length=gguf.context_length,
                has_chat_template=gguf.chat_template is not None,
                chat_template_override=(
                    chat_template_override if active is None else active.chat_template_override
                ),
                status=status if active is None else active.status,
                tool_parser=tool_parser if tool_parser is not None or active is None else active.tool_parser,
                keep_alive_s=None if active is None else active.keep_alive_s,
            )
            session.add(row)
            session.flush()
            return _info(row)

    def check_names_free(self, name: str, aliases: tuple[str, ...], *, new_version: bool = False) -> None:
        """Refuse a bad or taken name before a long import starts (`add` checks again when it adds)."""
        check_model_name(name)
        for existing in self.list():
            if new_version and existing.name == name:
                continue  # a new version of this very model: `add` checks the version itself
            taken = {name, *aliases} & set(existing.public_names)
            if taken:
                raise ConflictError(
                    f"name {sorted(taken)[0]!r} is already used by model {existing.name!r}", param="name"
                )

    def versions(self, name: str) -> builtins.list[ModelInfo]:
        """Every version of the model called `name`, oldest first; ModelNotFoundError if there is none."""
        with self._sessions() as session:
            rows = session.scalars(select(ModelRow).where(ModelRow.name == name).order_by(ModelRow.id))
            found = [_info(row) for row in rows]
        if not found:
            raise ModelNotFoundError(f"The model `{name}` does not exist.", param="name")
        return found

    def version(self, name: str, version: str) -> ModelInfo:
        """One version of a model, or ModelNotFoundError."""
        for model in self.versions(name):
            if model.version == version:
                return model
        raise ModelNotFoundError(f"The model `{name}` has no version `{version}`.", param="version")

    def previous(self, name: str) -> ModelInfo:
        """The version that was active before the current one (what a rollback goes back to)."""
        with self._sessions() as session:
            row = session.scalars(
                select(ModelRow)
                .where(ModelRow.name == name, ModelRow.active.is_(False), ModelRow.activated_at.is_not(None))
                .order_by(ModelRow.activated_at.desc(), ModelRow.id.desc())
            ).first()
            if row is None:
                raise ModelNotFoundError(f"The model `{name}` has no earlier active version.", param="name")
            return _info(row)

    def activate(self, name: str, version: str) -> ModelInfo:
        """Make `version` the one `name` serves, in one transaction; the status and aliases carry over."""
        with self._sessions.begin() as session:
            rows = list(session.scalars(select(ModelRow).where(ModelRow.name == name)))
            chosen = next((row for row in rows if row.version == version), None)
            if chosen is None:
                raise ModelNotFoundError(f"The model `{name}` has no version `{version}`.", param="version")
            current = next((row for row in rows if row.active), chosen)
            chosen.status, chosen.aliases = current.status, list(current.aliases)
            for row in rows:
                row.active = row is chosen
            chosen.activated_at = utc_now()
            session.flush()
            return _info(chosen)

    def get(self, model_id: int) -> ModelInfo | None:
        """One model version by its id, active or not; None when there is no such row."""
        with self._sessions() as session:
            row = session.get(ModelRow, model_id)
            return None if row is None else _info(row)

    def list(self) -> list[ModelInfo]:
        """Every registered model (its active version), in the order they were added."""
        if self._cache is None:
            return builtins.list(self._load_active())
        return builtins.list(self._cache.get(None, self._load_active))

    def _load_active(self) -> tuple[ModelInfo, ...]:
        with self._sessions() as session:
            rows = session.scalars(select(ModelRow).where(ModelRow.active.is_(True)).order_by(ModelRow.id))
            return tuple(_info(row) for row in rows)

    def enabled(self) -> builtins.list[ModelInfo]:
        """The models the supervisor should serve."""
        return [model for model in self.list() if model.status == "enabled"]

    def set_status(self, name: str, status: str) -> ModelInfo:
        """Mark a model `enabled` or `disabled`; a serving gateway follows within a second (serving/live)."""
        with self._sessions.begin() as session:
            rows = list(session.scalars(select(ModelRow).where(ModelRow.name == name)))
            if not rows:
                raise ModelNotFoundError(f"The model `{name}` does not exist.", param="name")
            for row in rows:  # every version: an activation carries the status over anyway
                row.status = status
            session.flush()
            return _info(next(row for row in rows if row.active))

    def set_aliases(self, name: str, aliases: tuple[str, ...]) -> ModelInfo:
        """Give every version of `name` exactly `aliases`; one another model uses raises ConflictError."""
        if name in aliases or len(set(aliases)) != len(aliases):
            raise ConflictError("a model's name and aliases must all differ", param="alias")
        for alias in aliases:
            if not 0 < len(alias) <= MAX_ALIAS_CHARS or alias != alias.strip():
                raise InvalidRequestError(f"an alias has 1 to {MAX_ALIAS_CHARS} characters", param="alias")
        with self._sessions.begin() as session:
            rows = list(session.scalars(select(ModelRow).where(ModelRow.name == name)))
            if not rows:
                raise ModelNotFoundError(f"The model `{name}` does not exist.", param="name")
            for existing in session.scalars(select(ModelRow).where(ModelRow.name != name)):
                taken = set(aliases) & {existing.name, *existing.aliases}
                if taken:
                    raise ConflictError(
                        f"name {sorted(taken)[0]!r} is already used by model {existing.name!r}", param="alias"
                    )
            for row in rows:
                row.aliases = list(aliases)
            session.flush()
            return _info(next(row for row in rows if row.active))

    def set_tool_parser(self, name: str, tool_parser: str) -> ModelInfo:
        """Set vLLM's tool-call parser for every version of `name` (`auto`, `none` or a parser name)."""
        with self._sessions.begin() as session:
            rows = list(session.scalars(select(ModelRow).where(ModelRow.name == name)))
            if not rows:
                raise ModelNotFoundError(f"The model `{name}` does not exist.", param="name")
            for row in rows:
                row.tool_parser = None if tool_parser == "auto" else tool_parser
            session.flush()
            return _info(next(row for row in rows if row.active))

    def set_keep_alive(self, name: str, seconds: float | None) -> ModelInfo:
        """Set how long every version of `name` stays loaded when idle (-1 pinned; None: the setting's)."""
        if seconds is not None:
            try:
                check_keep_alive(seconds)
            except ValueError as error:
                raise InvalidRequestError(str(error), param="keep_alive") from error
        with self._sessions.begin() as session:
            rows = list(session.scalars(select(ModelRow).where(ModelRow.name == name)))
            if not rows:
                raise ModelNotFoundError(f"The model `{name}` does not exist.", param="name")
            for row in rows:
                row.keep_alive_s = seconds
            session.flush()
            return _info(next(row for row in rows if row.active))

    def remove(self, name: str) -> ModelInfo:
        """Delete a model's registry entries, every version (their files stay where they are).

        Returns the active version; `versions` first when each version's file matters (the store's).
        """
        with self._sessions.begin() as session:
            rows = list(session.scalars(select(ModelRow).where(ModelRow.name == name)))
            if not rows:
                raise ModelNotFoundError(f"The model `{name}` does not exist.", param="name")
            removed = _info(next(row for row in rows if row.active))
            for row in rows:
                session.delete(row)
            return removed

    def remove_version(self, name: str, version: str) -> ModelInfo:
        """Delete one inactive version's entry; the active one is refused (activate another first)."""
        with self._sessions.begin() as session:
            row = session.scalars(
                select(ModelRow).where(ModelRow.name == name, ModelRow.version == version)
            ).one_or_none()
            if row is None:
                raise ModelNotFoundError(f"The model `{name}` has no version `{version}`.", param="version")
            if row.active:
                raise ConflictError(
                    f"version {version!r} of {name!r} is the active one; activate another first",
                    param="version",
                )
            removed = _info(row)
            session.delete(row)
            return removed

    def resolve(self, name: str) -> ModelInfo:
        """The model a request's `model` names, by name or alias, or ModelNotFoundError."""
        for model in self.list():
            if name in model.public_names:
                return model
        raise ModelNotFoundError(f"The model `{name}` does not exist.", param="model")

    def serving(self, name: str) -> ModelInfo:
        """The enabled model a request's `model` names; a disabled or removed one is not found, exactly as
        a name that was never registered (a request cannot tell them apart)."""
        for model in self.enabled():
            if name in model.public_names:
                return model
        raise ModelNotFoundError(f"The model `{name}` does not exist.", param="model")

    def add_awq_folder(
        self,
        folder: Path,
        facts: GgufInfo,
        *,
        name: str,
        aliases: tuple[str, ...] = (),
        tool_parser: str | None = None,
    ) -> ModelInfo:
        """Register an AWQ model folder (format `awq`, for vLLM) under `add`'s rules for names.

        `facts` come from the folder's config.json; `sha256` is the store manifest's digest over its files.
        """
        return self.add(
            folder, facts, name=name, aliases=aliases, model_format="awq", tool_parser=tool_parser
        )
