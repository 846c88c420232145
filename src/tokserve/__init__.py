"""tokserve: an OpenAI-compatible streaming server for Hugging Face transformers models."""
