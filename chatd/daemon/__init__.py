"""
The daemon: the room store, the TCP protocol, the UDP relay and its port, the
controller, the service tree, the twistd plugin's options, limits, metrics
and logs.
"""
