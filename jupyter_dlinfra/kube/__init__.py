"""Kubernetes plumbing shared by the job backend, kernel pods and telemetry: the API layer, the pod
template, PriorityClasses and the kernel pod launcher."""
