"""What the appliance's processes say to each other: OpenAI structs, SSE framing, admin API structs."""
