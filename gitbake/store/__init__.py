"""The content-addressed store: objects and manifests, the stat cache, locks, fsspec remotes.
Knows nothing of plans or history."""
