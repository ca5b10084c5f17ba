"""HTTP only: the base handler, the route table and the handlers under ``/dlinfra/api``.

Each handler parses, calls the service, and renders a view; no policy lives here.
"""
