"""Developer tools: code generators and helpers run from the repository root."""
