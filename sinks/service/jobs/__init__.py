"""SQL jobs: asynchronous, cancellable chains of scripts over the live contexts (docs/api.md, "Jobs")."""
