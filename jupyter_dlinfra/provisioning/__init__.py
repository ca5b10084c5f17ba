from .port import KernelLedgerPort, LaunchPlan, get_port, set_port
from .provisioner import DLInfraProvisioner

__all__ = ["DLInfraProvisioner", "KernelLedgerPort", "LaunchPlan", "get_port", "set_port"]
