"""What git bake does around commits: init, status/validate, the pipeline, run, the bake commit,
background jobs, the hooks and the merge driver."""
