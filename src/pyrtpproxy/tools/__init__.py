"""Offline tools that work on the relay's files (``pyrtpproxy extract``)."""
