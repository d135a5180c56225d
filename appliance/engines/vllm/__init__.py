"""The vLLM adapter: how the supervisor runs `vllm` as an OpenAI-compatible worker on a unix socket."""
