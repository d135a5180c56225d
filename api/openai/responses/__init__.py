"""POST /v1/responses: OpenAI's Responses API, stateless, answered through chat completions."""
