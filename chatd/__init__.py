"""chatd: chat rooms over TCP, message relay over UDP, as a twistd plugin."""

__version__ = "0.1.0"
