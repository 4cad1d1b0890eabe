"""What runs and stores steps: the RUN sandbox and its seccomp filter, snapshots, in-root reads, users, layers."""
