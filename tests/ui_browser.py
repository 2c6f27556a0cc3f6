"""A real headless Chromium (Debian's chromium + chromium-driver) driven by Selenium, for the
web page tests. Selenium's calls block, so tests run them in a thread (`Page.do`) while the
Service under test keeps serving on the event loop."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import (  # noqa: E402
    NoAlertPresentException,
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service as DriverService  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

T = TypeVar("T")
WAIT = 20.0  # seconds any one condition may take on a loaded 2-core machine

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/lib/chromium/chromedriver"


def _driver() -> WebDriver:
    if CHROMIUM is None or not os.path.exists(CHROMEDRIVER):
        message = "needs Debian's chromium and chromium-driver (apt-get install, as .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs them: their absence there is a failure
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespace for the sandbox
        "--disable-dev-shm-usage",
        "--window-size=1280,860",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager never tries to download a browser or driver.
    return webdriver.Chrome(options=options, service=DriverService(CHROMEDRIVER))


@pytest.fixture(scope="module")
def chromium() -> Iterator[WebDriver]:
    driver = _driver()
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """The browser on one page; every blocking call goes through `do`."""

    def __init__(self, driver: WebDriver) -> None:
        self.driver = driver

    async def do(self, func: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(func, *args)

    # -- blocking helpers (call through `do`) ----------------------------------------------

    def open(self, url: str) -> None:
        """Load `url` in a fresh session: no token, nothing from the last test."""
        self.driver.get("about:blank")
        self.driver.delete_all_cookies()
        self.driver.get(url)
        self.driver.execute_script("sessionStorage.clear()")
        self.driver.get(url)
        self.console()  # drop what earlier pages logged

    def wait(self, condition: Callable[[WebDriver], T], timeout: float = WAIT) -> T:
        """Poll `condition` until it returns something truthy; a re-rendered element
        (stale) just means "not yet". On time-out, fail with what the page showed."""
        try:
            return WebDriverWait(
                self.driver,
                timeout,
                poll_frequency=0.05,
                ignored_exceptions=(StaleElementReferenceException,),
            ).until(condition)
        except TimeoutException:
            shown = self.driver.find_element(By.TAG_NAME, "body").text
            raise AssertionError(f"timed out; the page showed:\n{shown}") from None

    def css(self, selector: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def click(self, selector: str) -> None:
        """Click the first element matching `selector` once it exists and is enabled."""

        def clicked(driver: WebDriver) -> bool:
            found = driver.find_elements(By.CSS_SELECTOR, selector)
            if not found or not found[0].is_enabled() or not found[0].is_displayed():
                return False
            found[0].click()
            return True

        self.wait(clicked)

    def text(self, selector: str) -> str:
        return self.wait(lambda d: (d.find_elements(By.CSS_SELECTOR, selector) or [None])[0]).text

    def wait_text(self, selector: str, predicate: Callable[[str], bool]) -> str:
        def matched(driver: WebDriver) -> str | None:
            for element in driver.find_elements(By.CSS_SELECTOR, selector):
                text = element.text
                if predicate(text):
                    return text or " "
            return None

        return self.wait(matched)

    def set_token(self, token: str) -> None:
        field = self.wait(lambda d: d.find_element(By.ID, "token"))
        field.clear()
        field.send_keys(token)
        self.click("#token-use")
        self.wait_text("#mode", lambda t: t.startswith("Admin token set"))

    def console(self) -> list[dict[str, Any]]:
        """The browser's console entries since the last call."""
        entries: list[dict[str, Any]] = self.driver.get_log("browser")
        return entries

    def console_errors(self) -> list[dict[str, Any]]:
        return [e for e in self.console() if e["level"] in ("SEVERE", "ERROR", "WARNING")]

    def alert_open(self) -> bool:
        try:
            self.driver.switch_to.alert  # noqa: B018 - raises when there is none
        except NoAlertPresentException:
            return False
        return True

    def screenshot(self) -> bytes:
        png: bytes = self.driver.get_screenshot_as_png()
        return png


__all__ = ["WAIT", "By", "Page", "WebDriverException", "chromium"]
