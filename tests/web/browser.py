"""
The page in a real browser: Debian's headless Chromium driven through its
own chromedriver by Selenium, nothing downloaded (Selenium Manager is kept
offline and both paths are given). Blocking, with a timeout on every wait:
the browser tests run the daemon and the other clients as processes or
plain sockets, so nothing here shares the test's reactor.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any, TypeVar

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 10.0
"""Seconds any one wait on a page may take before the test fails."""
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
    "--disable-dev-shm-usage",
)
"""
What Chromium needs to run headless as root in a container, and to try no
network of its own (without the background-networking flags it reaches for
Google's services, which a closed network answers with long timeouts).
"""

T = TypeVar("T")


def start_chromium(width: int = 1000, height: int = 700) -> tuple[WebDriver, Callable[[], None]]:
    """A headless Chromium with a fresh profile, and what ends it (the browser, its driver, the profile)."""
    # Selenium Manager would look for (and download) a browser or driver: both are given, and it stays offline.
    os.environ["SE_OFFLINE"] = "true"
    profile = tempfile.mkdtemp(prefix="chatd-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver: WebDriver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    except BaseException:
        shutil.rmtree(profile, ignore_errors=True)
        raise
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(WAIT)

    def stop() -> None:
        try:
            driver.quit()
        finally:
            shutil.rmtree(profile, ignore_errors=True)

    return driver, stop


def wait_for(probe: Callable[[], T | None], what: str, timeout: float = WAIT) -> T:
    """The first truthy value of C{probe()}, polled; AssertionError naming C{what} after C{timeout} seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.05)


_READ_LOG = """
return Array.from(document.querySelectorAll("#log li.msg")).map((line) => ({
  from: line.dataset.from,
  text: line.querySelector(".text").textContent,
  action: line.classList.contains("action"),
  seq: line.dataset.seq === undefined ? null : Number(line.dataset.seq),
  state: line.dataset.state || null,
  mine: line.classList.contains("mine"),
  history: line.classList.contains("history"),
}));
"""
_READ_MEMBERS = 'return Array.from(document.querySelectorAll("#members li")).map((item) => item.textContent);'


class ChatPage:
    """One tab of the page, driven as a person would: typing, Enter, Tab, clicks."""

    def __init__(self, driver: WebDriver, url: str) -> None:
        self.driver = driver
        self.url = url

    def open(self) -> None:
        self.driver.get(self.url)
        wait_for(lambda: self.driver.find_element(By.ID, "name").is_displayed(), "the name step")

    def focused_id(self) -> str:
        return str(self.driver.execute_script("return document.activeElement.id"))

    def type_keys(self, *keys: str) -> None:
        """Keys to whatever has the focus, as a keyboard sends them."""
        self.driver.switch_to.active_element.send_keys(*keys)

    def enter_name(self, name: str) -> None:
        # The name field has the focus on arrival.
        wait_for(lambda: self.focused_id() == "name", "the focus in the name field")
        self.type_keys(name, Keys.ENTER)
        wait_for(lambda: self.focused_id() == "room", "the room step, focused on the room field")

    def create_by_keyboard(self, room: str) -> None:
        """The room step by keyboard alone: Shift-Tab to the choice, an arrow to "create", Tab back, the name, Enter."""
        self.type_keys(Keys.SHIFT, Keys.TAB)
        self.type_keys(Keys.ARROW_DOWN)
        checked = self.driver.execute_script('return document.querySelector("input[name=action]:checked").value')
        assert checked == "create", checked
        self.type_keys(Keys.TAB, room, Keys.ENTER)

    def join(self, room: str, password: str | None = None, invite: str | None = None) -> None:
        self._room_form("join", room, password, invite)

    def create(self, room: str, password: str | None = None) -> None:
        self._room_form("create", room, password, None)

    def _room_form(self, action: str, room: str, password: str | None, invite: str | None) -> None:
        self.driver.find_element(By.CSS_SELECTOR, f"input[name=action][value={action}]").click()
        fields = (("room", room), ("password", password), ("invite", invite if action == "join" else None))
        for field, value in fields:
            element = self.driver.find_element(By.ID, field)
            if element.is_displayed():
                element.clear()
                if value:
                    element.send_keys(value)
        self.driver.find_element(By.ID, "enter").click()

    def invitation(self) -> str:
        """The last invitation token the page shows (after /invite), or ""."""
        token = self.driver.execute_script(
            'const codes = document.querySelectorAll("code.invite");'
            ' return codes.length ? codes[codes.length - 1].textContent : "";'
        )
        return str(token)

    def error(self) -> str:
        """The one-sentence error shown above the steps, if any."""
        element = self.driver.find_element(By.ID, "error")
        return element.text if element.is_displayed() else ""

    def state(self) -> str:
        return str(self.driver.find_element(By.ID, "state").get_attribute("data-state"))

    def wait_connected(self) -> None:
        wait_for(lambda: self.state() == "connected" and self.focused_id() == "text", f"{self.url} connected")
        self.assert_only_step("chat")

    def assert_only_step(self, step: str) -> None:
        """Only C{step} of the page's three (name-step, room-step, chat) is on the screen."""
        shown = [
            element_id
            for element_id in ("name-step", "room-step", "chat")
            if self.driver.find_element(By.ID, element_id).is_displayed()
        ]
        assert shown == [step], f"the page shows {shown}, not only {step}"

    def say(self, text: str) -> None:
        self.driver.find_element(By.ID, "text").send_keys(text, Keys.ENTER)

    def messages(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.driver.execute_script(_READ_LOG)
        return result

    def members(self) -> list[str]:
        result: list[str] = self.driver.execute_script(_READ_MEMBERS)
        return result

    def lines(self) -> list[str]:
        """Every line of the conversation as shown."""
        result: list[str] = self.driver.execute_script(
            'return Array.from(document.querySelectorAll("#log li")).map((line) => line.textContent);'
        )
        return result

    def wait_message(self, sender: str, text: str) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            return next((m for m in self.messages() if m["from"] == sender and m["text"] == text), None)

        return wait_for(find, f"{sender}: {text} on {self.url}; the page shows {self.lines()}")

    def wait_members(self, members: list[str]) -> None:
        wait_for(lambda: self.members() == members, f"members {members}; the page lists {self.members()}")

    def console_errors(self) -> list[str]:
        """What the page wrote to the console at SEVERE level (a script error, a refused connection, a CSP report)."""
        entries: list[dict[str, Any]] = self.driver.get_log("browser")
        return [str(entry["message"]) for entry in entries if entry.get("level") == "SEVERE"]
