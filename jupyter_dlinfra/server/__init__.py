"""The jupyter-server side: extension app, REST handlers, kernel authentication, periodic loops."""
