"""The control plane's fixtures come from tests/k8s_cluster.py, a plugin of tests/conftest.py."""
