from jupyter_dlinfra.provisioning.port import KernelLedgerPort, LaunchPlan, get_port, set_port
from jupyter_dlinfra.provisioning.provisioner import DLInfraProvisioner

__all__ = ["DLInfraProvisioner", "KernelLedgerPort", "LaunchPlan", "get_port", "set_port"]
