"""Building images: options and results, plan, stages, steps, COPY, image config, outputs."""
