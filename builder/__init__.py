"""Making images: plan, context, instruction semantics, RUN sandbox, layers, cache, CLI."""
