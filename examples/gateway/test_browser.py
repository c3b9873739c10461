"""The reference login page in a real headless Chromium (Debian's, driven
by Selenium through Debian's chromedriver), against a real daemon: a DSC+
login with a wrong answer first, answered by the simulator's emulated
card, and a push approved by the simulator's emulated phone app, which
is told the number the page shows as a person would read it.

Screenshots of each step go to ``SLS_SCREENSHOTS`` (a temporary
directory when unset); the README's come from this test.
"""

import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "clients" / "python" / "tests"))

from daemon import BIN, Daemon, token  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as shown  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

DSC_KEY = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
PHONE_SEED = "42" * 32
CHROMIUM = os.environ.get("SLS_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("SLS_CHROMEDRIVER", "/usr/bin/chromedriver")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LoginPage(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.shots = pathlib.Path(os.environ.get("SLS_SCREENSHOTS") or tempfile.mkdtemp(prefix="sls-shots-"))
        cls.shots.mkdir(parents=True, exist_ok=True)
        cls.daemon = Daemon()
        d = cls.daemon
        cls.card = d.admin("enroll", "gina", "dsc-plus", "--secret", DSC_KEY, "--pin", "1234", "--label", "blue")["device"]
        cls.ib_key = d.admin("enroll", "hugo", "ib-key", "--label", "my phone")["device"]
        key = subprocess.run(
            [str(BIN / "sls-sim"), "phone", "--print-key", "--seed", PHONE_SEED],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        d.admin("bind-push-key", str(cls.ib_key), key)
        cls.phone = subprocess.Popen(
            [str(BIN / "sls-sim"), "phone", "--addr", d.quic, "--tcp-addr", d.tcp, "--data-dir", str(d.data),
             "--device", str(cls.ib_key), "--seed", PHONE_SEED],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert cls.phone.stdout.readline().strip() == "subscribed"
        port = free_port()
        cls.base = f"http://127.0.0.1:{port}"
        cls.app = subprocess.Popen(
            [sys.executable, str(HERE / "app.py"), "--node", d.tcp, "--data-dir", str(d.data), "--port", str(port)],
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(cls.base + "/", timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline, "the login page did not come up"
                time.sleep(0.1)
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--no-first-run", "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--window-size=720,640"):
            options.add_argument(flag)
        cls.browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)

    @classmethod
    def tearDownClass(cls):
        cls.browser.quit()
        cls.app.terminate()
        cls.app.wait()
        cls.phone.stdin.close()
        cls.phone.wait(timeout=10)
        cls.phone.stdout.close()
        cls.daemon.close()

    def shot(self, name: str) -> None:
        self.browser.save_screenshot(str(self.shots / f"{name}.png"))

    def find(self, element_id: str, seconds: float = 10):
        return WebDriverWait(self.browser, seconds).until(shown.visibility_of_element_located((By.ID, element_id)))

    def sign_in(self, user: str) -> None:
        self.browser.get(self.base + "/")
        self.find("user").send_keys(user)
        self.find("password").send_keys("letmein")

    def test_a_dsc_plus_login_with_a_wrong_answer_first(self):
        self.sign_in("gina")
        self.shot("1-sign-in")
        self.find("sign-in").click()
        self.shot("2-devices")
        self.find(f"use-{self.card}").click()
        question = self.find("question").text
        self.assertRegex(question, r"^\d{6}$")
        self.shot("3-challenge")
        right = token("dscplus", "--key", DSC_KEY, "--pin", "1234", "--challenge", question)
        wrong = right[:-1] + str((int(right[-1]) + 1) % 10)
        self.find("answer").send_keys(wrong)
        self.find("verify").click()
        self.assertIn("Wrong answer. 2 more tries", self.find("problem").text)
        self.shot("4-wrong-answer")
        self.find("answer").send_keys(right)
        self.find("verify").click()
        self.assertEqual(self.find("welcome").text, "Welcome, gina")
        self.shot("5-signed-in")

    def test_a_push_approved_on_the_phone(self):
        self.sign_in("hugo")
        self.find("sign-in").click()
        self.find(f"push-{self.ib_key}").click()
        number = self.find("match").text
        self.assertRegex(number, r"^\d{2}$")
        self.shot("6-push-waiting")
        # The person reads the number off the page and chooses it on the phone.
        self.phone.stdin.write(number + "\n")
        self.phone.stdin.flush()
        self.assertEqual(self.phone.stdout.readline().strip(), f"chose {number}")
        self.assertEqual(self.find("welcome", 20).text, "Welcome, hugo")
        self.shot("7-push-approved")

    def test_a_wrong_password_goes_no_further(self):
        self.browser.get(self.base + "/")
        self.find("user").send_keys("gina")
        self.find("password").send_keys("guess")
        self.find("sign-in").click()
        self.assertEqual(self.find("problem").text, "Wrong user name or password.")
        self.browser.get(self.base + "/welcome")
        self.assertTrue(self.browser.current_url.endswith("/"), "not signed in")


if __name__ == "__main__":
    unittest.main()
