"""The serve page in headless Chromium: type a prime, press Generate, see text stream in."""

import shutil
import tempfile

import pytest

from textgen.serve import BackgroundServer

LAUNCH_FLAGS = ["--headless", "--no-sandbox", "--disable-background-networking", "--disable-gpu",
                "--no-first-run", "--disable-component-update", "--disable-sync"]


def find_browser():
    """Debian's chromium and chromium-driver (installed by .ci/run), or skip where absent."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        pytest.skip("no chromium/chromedriver here (apt-get install chromium chromium-driver)")
    return browser, driver


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    binary, driver_path = find_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = binary  # explicit paths: Selenium Manager never downloads anything
    for flag in LAUNCH_FLAGS + [f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.mark.slow
def test_typing_a_prime_and_pressing_generate_streams_text_in(tiny_generator, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with BackgroundServer(tiny_generator) as url:
        browser.get(url)
        wait = WebDriverWait(browser, 60, poll_frequency=0.05)
        wait.until(lambda d: "tiny" in d.find_element(By.ID, "model").text)
        prime = browser.find_element(By.ID, "prime")
        prime.send_keys("The cat")
        browser.execute_script(  # move the slider as a drag would: set the value, fire input
            "const s = document.getElementById('temperature'); s.value = '0.5';"
            "s.dispatchEvent(new Event('input'));")
        assert browser.find_element(By.ID, "temperature-value").text == "0.5"
        length = browser.find_element(By.ID, "length")
        length.clear()
        length.send_keys("2000")  # long enough to still be running when we look
        browser.find_element(By.ID, "generate").click()
        output = browser.find_element(By.ID, "output")
        wait.until(lambda d: len(output.text) > len("The cat") + 5)
        partial = output.text  # text arrived while generation was still running
        assert partial.startswith("The cat") and browser.find_element(By.ID, "status").text == "generating…"
        wait.until(lambda d: len(output.text) > len(partial) + 20)  # and keeps arriving
        browser.find_element(By.ID, "stop").click()
        wait.until(lambda d: d.find_element(By.ID, "status").text == "stopped")
        assert output.text.startswith(partial) and len(output.text) < len("The cat") + 2000
        browser.find_element(By.ID, "generate").click()  # the server is free again at once
        wait.until(lambda d: len(output.text) > len("The cat") + 5)
        browser.save_screenshot(str(tmp_path / "page.png"))
