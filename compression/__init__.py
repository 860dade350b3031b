"""Codecs and the self-describing wire format. Pure tensor math: no sockets, no asyncio."""
