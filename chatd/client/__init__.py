"""
The client side: the client library (ChatClient), its events, TLS trust and
pins, the chatd-chat command line and line mode, the slash commands, the
certificate tool. Imports nothing of the daemon.
"""
