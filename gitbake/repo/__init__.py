"""A model repository: where its store lives, plans, history (log/tree/show, lineage, reachability,
targets), .bake/model, leases, gc and fsck."""
