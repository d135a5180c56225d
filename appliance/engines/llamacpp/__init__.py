"""The llama.cpp worker: one GGUF model in its own process, speaking the OpenAI protocol on a unix socket."""
