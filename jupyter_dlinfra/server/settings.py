"""Who this server is in the ledger, and how often its loops run: plain values from the options."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ServiceSettings"]


@dataclass(frozen=True, kw_only=True)
class ServiceSettings:
    node: str
    user: str
    server_id: str
    #: a team gateway: callers are told apart by their tokens, not all taken as ``user``
    multi_user: bool = False
    telemetry_interval: float = 2.0
    reconcile_interval: float = 30.0
    watch_interval: float = 0.2
    #: a kernel of another server with no pid yet counts as alive for this long (seconds)
    launch_grace: float = 300.0
    #: another server's kernel found dead is left this long to that server to report (seconds)
    owner_report_grace: float = 10.0
    hide_unallocated_gpus: bool = True
    #: changes closer together than this share one event-stream snapshot (seconds)
    events_debounce: float = 0.05
    #: frames a second the event streams are handed in all, at most (0: no bound)
    events_fanout_rate: float = 2000.0
    #: an idle event stream gets a keepalive comment this often (seconds)
    events_keepalive: float = 15.0
    #: how often batch jobs are started and polled (seconds); 0: never
    job_interval: float = 1.0
