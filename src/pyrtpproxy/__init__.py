"""pyrtpproxy: a media relay for VoIP that speaks the rtpproxy control protocol."""

__version__ = "0.1.0"
