"""Kubernetes plumbing shared by the job backend and kernel pods: the API layer, the pod template,
PriorityClasses and the kernel pod launcher."""
