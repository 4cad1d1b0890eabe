"""The build context: reading it, .dockerignore, COPY source resolution, the file hash cache."""
