"""On-disk formats: safetensors headers, Hugging Face index JSON, legacy pickle checkpoints."""
