"""The team gateway: one jupyter-server that owns the ledger and runs everyone's kernels.

People's own Jupyter servers point at it with jupyter_server's ``--gateway-url``; it knows who
calls by their tokens (:mod:`.identity`), lets each person act only on their own kernels (the
extension's owner-checked kernel handlers, :mod:`jupyter_dlinfra.server.handlers.kernels`), and
its ``/dlinfra/api`` is what their servers forward to
(:mod:`jupyter_dlinfra.server.forwarding`). ``jupyter dlinfra gateway`` starts it (:mod:`.app`).
This package sits above :mod:`jupyter_dlinfra.server`: the server imports nothing of it.
"""
