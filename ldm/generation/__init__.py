"""Generation: settings and limits, samplers, loading a model for inference, the pipeline and `generate`,
PNG output, the fast CPU paths, and reading the three checkpoint forms."""
