"""
The wire protocol both sides share: frames, payloads, datagrams, sealing,
certificate fingerprints, the one error family. Pure: no Twisted, no sockets,
no clock, no logging.
"""
