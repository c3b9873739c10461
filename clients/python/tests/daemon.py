"""A real ``slsd serve`` for the tests: a fresh data directory, ephemeral
ports (QUIC, TCP/TLS, metrics), stopped with SIGTERM. The binaries come
from ``SLS_BIN`` (a directory holding ``slsd`` and ``sls-sim``), else the
workspace's ``target/debug``."""

import json
import os
import pathlib
import signal
import subprocess
import tempfile

WORKSPACE = pathlib.Path(__file__).resolve().parents[3]
BIN = pathlib.Path(os.environ.get("SLS_BIN", WORKSPACE / "target" / "debug"))


class Daemon:
    def __init__(self, config: str = "", server_keys: str = ""):
        self.dir = tempfile.TemporaryDirectory(prefix="sls-python-")
        self.data = pathlib.Path(self.dir.name) / "data"
        self.config = pathlib.Path(self.dir.name) / "slsd.toml"
        self.config.write_text(
            '[server]\nlisten = "127.0.0.1:0"\ntcp-listen = "127.0.0.1:0"\nmetrics = "127.0.0.1:0"\n'
            + server_keys
            + config
        )
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [str(BIN / "slsd"), "serve", "--config", str(self.config), "--data-dir", str(self.data)],
            stdout=subprocess.PIPE,
            env={**os.environ, "RUST_LOG": "warn"},
            text=True,
        )
        for line in self.process.stdout:
            if line.startswith("slsd: listening on "):
                self.quic = line.split()[3]
            if line.startswith("slsd: TCP/TLS fallback on "):
                self.tcp = line.split()[4]
            if line.strip() == "slsd: ready":
                return
        raise RuntimeError("slsd did not start")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        self.process.stdout.close()
        return code

    def restart(self) -> None:
        assert self.stop() == 0
        self.start()

    def close(self) -> None:
        if self.process.poll() is None:
            self.stop()
        self.dir.cleanup()

    def certs(self, role: str = "gateway") -> dict:
        """The ``ca``, ``cert`` and ``key`` options of a client with ``role``."""
        return {
            "ca": str(self.data / "ca.pem"),
            "cert": str(self.data / f"{role}.pem"),
            "key": str(self.data / f"{role}.key"),
        }

    def admin(self, *args: str) -> dict:
        """``slsd admin --json ARGS``, as JSON."""
        done = subprocess.run(
            [str(BIN / "slsd"), "admin", "--data-dir", str(self.data), "--addr", self.quic, "--json", *args],
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(done.stdout)


def token(*args: str) -> str:
    """What an emulated device shows: ``sls-sim token ARGS``."""
    done = subprocess.run([str(BIN / "sls-sim"), "token", *args], capture_output=True, text=True, check=True)
    return done.stdout.strip()
