"""Tool calling in the llama.cpp worker: call formats, prompts, grammars and the streamed-call parser."""
