"""synthpref_operator: the Kubernetes operator and its local control plane for tests."""
