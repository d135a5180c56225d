"""Registered models: names, aliases and what their files say about them."""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from appliance.errors import ConflictError, ModelNotFoundError
from appliance.gguf_info import GgufInfo
from appliance.registry.schema import ModelRow


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
    )


class ModelRegistry:
    """Adds, finds and lists models; names and aliases are unique across all models."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def add(
        self,
        path: Path,
        gguf: GgufInfo,
        *,
        name: str,
        aliases: tuple[str, ...] = (),
        chat_template_override: str | None = None,
    ) -> ModelInfo:
        """Register a GGUF file under `name` and `aliases`; a taken name raises ConflictError."""
        wanted = {name, *aliases}
        if len(wanted) != 1 + len(aliases):
            raise ConflictError("a model's name and aliases must all differ", param="alias")
        with self._sessions.begin() as session:
            for existing in session.scalars(select(ModelRow)):
                taken = wanted & {existing.name, *existing.aliases}
                if taken:
                    raise ConflictError(
                        f"name {sorted(taken)[0]!r} is already used by model {existing.name!r}", param="name"
                    )
            row = ModelRow(
                name=name,
                aliases=list(aliases),
                format="gguf",
                architecture=gguf.architecture,
                quantization=gguf.quantization,
                path=str(path.resolve()),
                sha256=gguf.sha256,
                size_bytes=gguf.size_bytes,
                context_length=gguf.context_length,
                has_chat_template=gguf.chat_template is not None,
                chat_template_override=chat_template_override,
                status="enabled",
            )
            session.add(row)
            session.flush()
            return _info(row)

    def list(self) -> list[ModelInfo]:
        """Every registered model, in the order they were added."""
        with self._sessions() as session:
            return [_info(row) for row in session.scalars(select(ModelRow).order_by(ModelRow.id))]

    def enabled(self) -> builtins.list[ModelInfo]:
        """The models the supervisor should serve."""
        return [model for model in self.list() if model.status == "enabled"]

    def set_status(self, name: str, status: str) -> ModelInfo:
        """Mark a model `enabled` or `disabled`; the supervisor reads the status at its next start."""
        with self._sessions.begin() as session:
            row = session.scalars(select(ModelRow).where(ModelRow.name == name)).one_or_none()
            if row is None:
                raise ModelNotFoundError(f"The model `{name}` does not exist.", param="name")
            row.status = status
            session.flush()
            return _info(row)

    def remove(self, name: str) -> ModelInfo:
        """Delete a model's registry entry (its file stays where it is)."""
        with self._sessions.begin() as session:
            row = session.scalars(select(ModelRow).where(ModelRow.name == name)).one_or_none()
            if row is None:
                raise ModelNotFoundError(f"The model `{name}` does not exist.", param="name")
            removed = _info(row)
            session.delete(row)
            return removed

    def resolve(self, name: str) -> ModelInfo:
        """The model a request's `model` names, by name or alias, or ModelNotFoundError."""
        for model in self.list():
            if name in model.public_names:
                return model
        raise ModelNotFoundError(f"The model `{name}` does not exist.", param="model")
