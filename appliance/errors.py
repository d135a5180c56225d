"""One error hierarchy for the whole appliance; the gateway maps it to OpenAI-shaped JSON in one place."""

from __future__ import annotations


class ApplianceError(Exception):
    """Base of every error the appliance raises on purpose; carries its HTTP status and OpenAI error type."""

    status_code: int = 500
    error_type: str = "server_error"
    code: str | None = None
    retry_after_s: int | None = None
    """When set, the response carries `Retry-After` with this many seconds."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class SettingsError(ApplianceError):
    """The settings file is missing a value, has an unknown key, or a value of the wrong type."""

    code = "invalid_settings"


class InvalidRequestError(ApplianceError):
    """The request itself is wrong: bad parameters, wrong types, unsupported values."""

    status_code = 400
    error_type = "invalid_request_error"


class ContextLengthExceededError(InvalidRequestError):
    """The prompt does not fit in the model's context window."""

    code = "context_length_exceeded"


class PromptTooLongError(InvalidRequestError):
    """The prompt has more tokens than the key's `max_prompt_tokens`."""

    code = "prompt_too_long"


class ChatTemplateMissingError(InvalidRequestError):
    """The model has no chat template, so chat routes cannot render messages for it."""

    code = "chat_template_missing"


class ModelNotFoundError(ApplianceError):
    """No registered model or alias has the requested name."""

    status_code = 404
    error_type = "invalid_request_error"
    code = "model_not_found"


class NotFoundError(ApplianceError):
    """A named resource (key, route) does not exist."""

    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"


class AuthenticationError(ApplianceError):
    """No API key, or a key that is unknown or revoked."""

    status_code = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDeniedError(ApplianceError):
    """A valid key whose role may not use this route."""

    status_code = 403
    error_type = "invalid_request_error"
    code = "insufficient_permissions"


class SignedBundleRequiredError(PermissionDeniedError):
    """`[store] require_signed` is on and a model was offered as a plain file, not in a signed bundle."""

    code = "signed_bundle_required"


class BundleRefusedError(ApplianceError):
    """A model bundle failed verification (signature, trusted key, member digests, format): forbidden,
    like any other way in that is not signed by a key trusted here."""

    status_code = 403
    error_type = "invalid_request_error"
    code = "bundle_refused"


class ModelFileError(ApplianceError):
    """A model file that is not a readable GGUF file (wrong magic, truncated, unreadable)."""

    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_model_file"


class ConflictError(ApplianceError):
    """The name or alias is already taken."""

    status_code = 409
    error_type = "invalid_request_error"
    code = "conflict"


class EngineUnavailableError(ApplianceError):
    """The worker that serves the model is down, starting, or did not answer."""

    status_code = 503
    error_type = "server_error"
    code = "engine_unavailable"
    retry_after_s: int | None = 1  # children that no retry would help say None


class QueueFullError(ApplianceError):
    """Every slot is busy and the bounded wait queue is full: come back shortly."""

    status_code = 429
    error_type = "rate_limit_exceeded"
    code = "queue_full"
    retry_after_s = 1


class RateLimitError(ApplianceError):
    """The key used up its requests or tokens per minute; `Retry-After` says when there is room again."""

    status_code = 429
    error_type = "rate_limit_exceeded"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: int, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.retry_after_s = retry_after_s


class RequestTooLargeError(ApplianceError):
    """The body is larger than the key's limit."""

    status_code = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class UnsupportedMediaTypeError(ApplianceError):
    """The body is not sent as `application/json`."""

    status_code = 415
    error_type = "invalid_request_error"
    code = "unsupported_media_type"


class ClientClosedRequestError(ApplianceError):
    """The client hung up before its non-streamed answer was ready (nobody reads this answer)."""

    status_code = 499
    error_type = "invalid_request_error"
    code = "client_closed_request"


class RequestTimeoutError(ApplianceError):
    """The request ran past its time limit; its generation was cancelled."""

    status_code = 504
    error_type = "server_error"
    code = "request_timeout"


class EngineError(ApplianceError):
    """The worker answered with an error the gateway cannot attribute to the request."""

    status_code = 502
    error_type = "server_error"
    code = "engine_error"


class StoreIntegrityError(ApplianceError):
    """An encrypted model file or its wrapped key failed authentication: tampered, truncated, wrong key."""

    status_code = 422
    error_type = "invalid_request_error"
    code = "store_integrity_error"


class EgressBlockedError(ApplianceError):
    """A process of the appliance tried to reach something that is not loopback, a unix socket or allowed."""

    status_code = 500
    error_type = "server_error"
    code = "egress_blocked"


def error_body(
    message: str, error_type: str, *, param: str | None = None, code: str | None = None
) -> dict[str, dict[str, str | None]]:
    """OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}`."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def appliance_error_body(error: ApplianceError) -> dict[str, dict[str, str | None]]:
    """The OpenAI-shaped body of an ApplianceError."""
    return error_body(error.message, error.error_type, param=error.param, code=error.code)
