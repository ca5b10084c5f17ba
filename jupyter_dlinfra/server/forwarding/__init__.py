"""A person's own server pointed at the team gateway: ``/dlinfra`` forwarded there, and kernel
websockets that never overtake an abandoned one. Runs in people's servers, not in the gateway."""
