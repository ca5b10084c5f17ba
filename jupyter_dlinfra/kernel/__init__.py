"""What runs inside the user's kernel: the ``%gpu`` grammar and magics, the kernel's REST client,
CUDA-state checks, profiling and its coaching hints.

Standard library and IPython only: a kernel must not pay for the server side (SQLAlchemy,
jupyter_server) when it loads ``%gpu``. ``tests/test_layout.py`` holds every module here to it.
"""
