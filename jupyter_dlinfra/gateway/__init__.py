"""The team gateway: one jupyter-server that owns the ledger and runs everyone's kernels.

People's own Jupyter servers point at it with jupyter_server's ``--gateway-url``; it knows who
calls by their tokens (:mod:`.identity`), lets each person act only on their own kernels
(:mod:`.kernels`), and its ``/dlinfra/api`` is what their servers forward to (:mod:`.forward`).
``jupyter dlinfra gateway`` starts it (:mod:`.app`).
"""
