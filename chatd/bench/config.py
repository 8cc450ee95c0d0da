"""
The settings of one chatd-bench run, as checked from the command line
(C{chatd.bench.main.make_config}), and the program's name.
"""

from __future__ import annotations

from dataclasses import dataclass

PROG = "chatd-bench"


@dataclass(frozen=True)
class Config:
    scenario: str
    rooms: int
    members: int
    window: int | None
    rate: float | None
    duration: float
    warmup: float
    expire: float
    size: int
    workers: int
    host: str
    address: str
    family: int
    tcp_port: int
    udp_port: int
    password: str
    server_pid: int | None
    json: bool
    quiet: bool
    setup_parallel: int
    setup_timeout: float
    request_timeout: float
