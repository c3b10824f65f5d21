"""Chat backends that answer prompts: vLLM offline and any OpenAI-compatible endpoint."""
