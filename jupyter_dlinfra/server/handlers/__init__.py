"""HTTP only: the base handler, the route table (:mod:`.routes`), the handlers under
``/dlinfra/api`` and the owner-checked kernel handlers a gateway serves (:mod:`.kernels`).

Each handler parses, calls the service, and renders a view; no policy lives here.
"""
