"""
Take the README's screenshots of the web page, in the real browser.

    .venv/bin/python docs/web_screenshot.py    # writes docs/web-page.png, web-phone.png, web-room-step.png

Starts a daemon (C{twistd -n chatd --web-port}) on free loopback ports, opens
the page in headless Chromium (tests.web.browser: Debian's chromium and
chromedriver, nothing downloaded) as alice, who creates room teahouse; bob
joins from a second page (captured at the room step) and carol from
C{chatd-chat --line}; they chat, and alice's page is captured at a desktop's
size and at a phone's.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.web.browser import ChatPage, start_chromium, wait_for  # noqa: E402


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs")
    arguments = parser.parse_args()
    tcp, udp, web = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
    twistd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--nodaemon", "--pidfile="]
    daemon = subprocess.Popen(
        [*twistd, "chatd", "--tcp-port", str(tcp), "--udp-port", str(udp), "--web-port", str(web)],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stops = []
    carol: subprocess.Popen[bytes] | None = None
    try:
        url = f"http://127.0.0.1:{web}/"
        wait_for(lambda: _answers(web), "the daemon listening", timeout=15)
        driver, stop = start_chromium(1100, 640)
        stops.append(stop)
        alice = ChatPage(driver, url)
        alice.open()
        alice.enter_name("alice")
        alice.create_by_keyboard("teahouse")
        alice.wait_connected()
        alice.say("Good morning! The kettle is on.")
        driver_bob, stop_bob = start_chromium()
        stops.append(stop_bob)
        bob = ChatPage(driver_bob, url)
        bob.open()
        bob.enter_name("bob")
        bob.driver.set_window_size(700, 620)
        bob.driver.find_element("id", "room").send_keys("teahouse")
        bob.driver.save_screenshot(str(arguments.out / "web-room-step.png"))
        bob.join("teahouse")
        bob.wait_connected()
        line = [sys.executable, "-m", "chatd.tui.main", "--line", "--tcp-port", str(tcp), "--udp-port", str(udp)]
        carol = subprocess.Popen(
            [*line, "--room", "teahouse", "--name", "carol"],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
        )
        alice.wait_members(["alice", "bob", "carol"])
        bob.say("Morning! Green tea for me, please.")
        alice.wait_message("bob", "Morning! Green tea for me, please.")
        assert carol.stdin is not None
        carol.stdin.write(b"hello from my terminal :)\n")
        carol.stdin.flush()
        alice.wait_message("carol", "hello from my terminal :)")
        bob.say("/me pours three cups")
        alice.wait_message("bob", "pours three cups")
        alice.say("The browser and the terminal, in one room.")
        wait_for(
            lambda: all(m["state"] == "sent" for m in alice.messages() if m["mine"]), "alice's messages marked sent"
        )
        time.sleep(0.3)
        alice.driver.find_element("id", "text").send_keys("/invite")
        alice.driver.save_screenshot(str(arguments.out / "web-page.png"))
        alice.driver.set_window_size(390, 760)
        time.sleep(0.3)
        alice.driver.save_screenshot(str(arguments.out / "web-phone.png"))
    finally:
        if carol is not None:
            carol.kill()
            carol.wait()
        for stop in stops:
            stop()
        daemon.terminate()
        daemon.wait(timeout=10)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


if __name__ == "__main__":
    main()
