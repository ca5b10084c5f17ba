"""The route table: every path this extension serves, and the handler behind it.

The API's routes are one list, which the OpenAPI test reads too. A gateway adds the
owner-checked kernel handlers, matched before jupyter_server's own ``/api/kernels``; a person's
server whose kernels run on a gateway forwards ``/dlinfra`` there instead.
"""

from __future__ import annotations

from tornado.web import RequestHandler

from jupyter_dlinfra.server.forwarding.api import FORWARD_ROUTES
from jupyter_dlinfra.server.handlers.base import DLInfraHandler
from jupyter_dlinfra.server.handlers.gpus import (
    AllocationHandler,
    AllocationsHandler,
    ClusterHandler,
    EventsHandler,
    KernelRestartHandler,
    MetricsHandler,
    QueueHandler,
)
from jupyter_dlinfra.server.handlers.jobs import (
    BackendsHandler,
    JobHandler,
    JobLogHandler,
    JobOutputHandler,
    JobRerunHandler,
    JobsHandler,
)
from jupyter_dlinfra.server.handlers.kernels import KERNEL_ROUTES
from jupyter_dlinfra.server.handlers.parking import KernelParkHandler, KernelResumeHandler
from jupyter_dlinfra.server.handlers.policy import (
    KernelKeepHandler,
    KernelUsageHandler,
    MeHandler,
    NoticeActionHandler,
    PolicyHandler,
    PolicySimulateHandler,
)
from jupyter_dlinfra.server.handlers.reports import UsageReportHandler
from jupyter_dlinfra.server.handlers.scheduling import FairShareHandler, SchedulingHandler

__all__ = ["FORWARD_ROUTES", "KERNEL_ROUTES", "ROUTES", "Route", "routes"]

Route = tuple[str, type[RequestHandler]]

#: (path under base_url, handler, methods) - the OpenAPI test reads this table
ROUTES: list[tuple[str, type[DLInfraHandler], tuple[str, ...]]] = [
    (r"/dlinfra/api/cluster", ClusterHandler, ("GET",)),
    (r"/dlinfra/api/allocations", AllocationsHandler, ("GET", "POST")),
    (r"/dlinfra/api/allocations/(?P<allocation_id>[^/]+)", AllocationHandler, ("GET", "DELETE")),
    (r"/dlinfra/api/queue", QueueHandler, ("GET",)),
    (r"/dlinfra/api/scheduling", SchedulingHandler, ("GET", "PUT")),
    (r"/dlinfra/api/fairshare", FairShareHandler, ("GET",)),
    (r"/dlinfra/api/kernels/(?P<kernel_id>[^/]+)/restart", KernelRestartHandler, ("POST",)),
    (r"/dlinfra/api/kernels/(?P<kernel_id>[^/]+)/keep", KernelKeepHandler, ("POST",)),
    (r"/dlinfra/api/kernels/(?P<kernel_id>[^/]+)/usage", KernelUsageHandler, ("GET",)),
    (r"/dlinfra/api/kernels/(?P<kernel_id>[^/]+)/park", KernelParkHandler, ("POST",)),
    (r"/dlinfra/api/kernels/(?P<kernel_id>[^/]+)/resume", KernelResumeHandler, ("POST",)),
    (r"/dlinfra/api/policy", PolicyHandler, ("GET", "PUT")),
    (r"/dlinfra/api/policy/simulate", PolicySimulateHandler, ("POST",)),
    (r"/dlinfra/api/me", MeHandler, ("GET",)),
    (r"/dlinfra/api/reports/usage", UsageReportHandler, ("GET",)),
    (
        r"/dlinfra/api/notices/(?P<notice_id>[^/]+)/actions/(?P<action_id>[^/]+)",
        NoticeActionHandler,
        ("POST",),
    ),
    (r"/dlinfra/api/jobs", JobsHandler, ("GET", "POST")),
    (r"/dlinfra/api/backends", BackendsHandler, ("GET",)),
    (r"/dlinfra/api/jobs/(?P<job_id>[^/]+)", JobHandler, ("GET", "DELETE")),
    (r"/dlinfra/api/jobs/(?P<job_id>[^/]+)/log", JobLogHandler, ("GET",)),
    (r"/dlinfra/api/jobs/(?P<job_id>[^/]+)/output", JobOutputHandler, ("GET",)),
    (r"/dlinfra/api/jobs/(?P<job_id>[^/]+)/rerun", JobRerunHandler, ("POST",)),
    (r"/dlinfra/api/events", EventsHandler, ("GET",)),
    # a scrape target rather than an API call, hence outside /dlinfra/api
    (r"/dlinfra/metrics", MetricsHandler, ("GET",)),
]


def routes(*, gateway: bool, forwarding: bool) -> list[Route]:
    """What the extension registers: a forwarding server's few routes, else the API's (after a
    gateway's kernel handlers, which must be matched first)."""
    if forwarding:
        return list(FORWARD_ROUTES)
    found: list[Route] = list(KERNEL_ROUTES) if gateway else []
    found.extend((pattern, handler) for pattern, handler, _ in ROUTES)
    return found
