"""Options of batch jobs (server/job_service.py)."""

from __future__ import annotations

from typing import Any

from traitlets import Dict, Float, HasTraits, Int, List, Unicode, validate

from jupyter_dlinfra.server.config.lists import read_list_literal

__all__ = ["JobOptions"]


class JobOptions(HasTraits):
    job_backends = List(
        Unicode(),
        ["local"],
        config=True,
        help="Backends that run notebooks submitted as jobs, by name (entry-point group "
        "jupyter_dlinfra.backends): 'local' (a detached process on this node, GPUs from the "
        "ledger), 'slurm' (sbatch; SLURM places GPUs). Empty: job submission is off.",
    )
    default_backend = Unicode(
        "local",
        config=True,
        help="Backend of a submission that names none; must be one of job_backends.",
    )
    backend_options = Dict(
        config=True,
        help="Keyword options per backend, e.g. {'slurm': {'partition': 'gpu', 'env': "
        "{'SLURM_CONF': '/etc/slurm/slurm.conf'}}}. See each backend's documentation.",
    )
    jobs_dir = Unicode(
        "dlinfra-jobs",
        config=True,
        help="Directory of the jobs' snapshots, logs and outputs (one sub-directory per job). "
        "Relative: under the server's root, so JupyterLab can open the outputs. With SLURM or "
        "Kubernetes it must be on storage the job's nodes share.",
    )
    job_interval = Float(
        1.0,
        config=True,
        help="Seconds between two passes of the job loop (start what may start, poll what "
        "runs). 0 stops the loop: jobs are recorded but never started.",
    )
    max_notebook_bytes = Int(
        16 * 2**20,
        config=True,
        help="Largest notebook (bytes) that can be submitted as a job.",
    )
    max_parameter_bytes = Int(
        64 * 2**10,
        config=True,
        help="Largest set of job parameters (bytes of JSON) per job.",
    )
    max_sweep_jobs = Int(100, config=True, help="Most jobs one sweep (parameter grid) may submit.")

    @validate("job_backends")
    def _read_backends(self, proposal: dict[str, Any]) -> list[str]:
        return read_list_literal(proposal)
