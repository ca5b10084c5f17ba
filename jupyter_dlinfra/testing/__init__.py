"""The test harness and stand-ins: a server process, a Kubernetes control plane and the node agent
that plays kubelet, a DCGM exporter and Prometheus.

Run from the checkout (tests and ``benchmarks/``); the wheel leaves this package out.
"""
