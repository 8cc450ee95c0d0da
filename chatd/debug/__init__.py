"""chatd-debug, the telnet-style debug client that prints every byte."""
