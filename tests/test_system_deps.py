"""scripts/system-deps.sh, run against a PATH of stub commands: never the real apt-get."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "system-deps.sh"
TEST_COMMANDS = ("nginx", "promtool", "prometheus", "amtool", "chromium", "npm")


class Machine:
    """A tmp dir of stub executables that stands in for the host; stubs log their calls."""

    def __init__(self, root: Path, uid: int) -> None:
        self.bin = root / "bin"
        self.sbin = root / "sbin"
        self.log = root / "calls.log"
        self.bin.mkdir()
        self.sbin.mkdir()
        self.log.touch()
        # The stub sudo runs its command through PATH, as the real one does.
        for real in ("env", "true"):
            path = shutil.which(real)
            assert path is not None
            (self.bin / real).symlink_to(path)
        self.stub("id", f"echo {uid}")
        for name in ("apt-get", "systemctl"):
            self.stub(name, f'echo "{name} DEBIAN_FRONTEND=$DEBIAN_FRONTEND $*" >> {self.log}')

    def stub(self, name: str, body: str = "exit 0", where: Path | None = None) -> None:
        path = (where or self.bin) / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)

    def present(self, *names: str) -> None:
        for name in names:
            self.stub(name)

    def sudo(self, *, prompts: bool = False) -> None:
        body = "exit 1" if prompts else '[ "$1" = -n ] && shift\nexec "$@"'
        self.stub("sudo", f'echo "sudo $*" >> {self.log}\n{body}')

    def run(self, *commands: str) -> subprocess.CompletedProcess[str]:
        bash = shutil.which("bash")
        assert bash is not None
        return subprocess.run(
            [bash, str(SCRIPT), *commands],
            env={"PATH": str(self.bin), "SYSTEM_DEPS_SBIN": str(self.sbin)},
            capture_output=True,
            text=True,
            timeout=30,
        )

    def calls(self, name: str) -> list[list[str]]:
        lines = self.log.read_text().splitlines()
        return [line.split()[1:] for line in lines if line.split()[0] == name]


def _packages(install_args: list[str]) -> list[str]:
    assert install_args[:2] == ["DEBIAN_FRONTEND=noninteractive", "-qq"]
    assert "install" in install_args and "-y" in install_args
    assert "--no-install-recommends" in install_args
    return [a for a in install_args[2:] if not a.startswith("-") and a != "install"]


@pytest.fixture
def root(tmp_path: Path) -> Machine:
    return Machine(tmp_path, uid=0)


@pytest.fixture
def user(tmp_path: Path) -> Machine:
    return Machine(tmp_path, uid=1000)


def test_everything_present_exits_quietly_without_calling_apt(root: Machine) -> None:
    root.present(*TEST_COMMANDS)

    result = root.run(*TEST_COMMANDS)

    assert result.returncode == 0, result.stderr
    assert (result.stdout, result.stderr) == ("", "")
    assert root.log.read_text() == ""


def test_nginx_in_sbin_counts_as_present(user: Machine) -> None:
    # Debian's nginx is in /usr/sbin, off a regular user's PATH.
    user.stub("nginx", where=user.sbin)

    result = user.run("nginx")

    assert result.returncode == 0, result.stderr
    assert user.log.read_text() == ""


def test_root_updates_then_installs_exactly_the_missing_packages(root: Machine) -> None:
    root.present("prometheus", "amtool", "chromium", "npm")

    result = root.run(*TEST_COMMANDS)

    assert result.returncode == 0, result.stderr
    update, install = root.calls("apt-get")
    assert update == ["DEBIAN_FRONTEND=noninteractive", "-qq", "update"]
    assert _packages(install) == ["nginx", "prometheus"]


def test_services_started_by_the_install_are_stopped(root: Machine) -> None:
    root.present("promtool", "prometheus", "chromium", "npm")

    assert root.run(*TEST_COMMANDS).returncode == 0

    stopped = [args[-1] for args in root.calls("systemctl") if "stop" in args]
    assert stopped == ["nginx", "prometheus-alertmanager"]


def test_chromium_brings_a_font(root: Machine) -> None:
    assert root.run("chromium").returncode == 0

    _, install = root.calls("apt-get")
    assert _packages(install) == ["chromium", "fonts-dejavu-core"]


def test_without_root_or_sudo_prints_one_line_and_fails(user: Machine) -> None:
    result = user.run("nginx", "promtool")

    assert result.returncode != 0
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert "nginx prometheus" in line
    assert "sudo apt-get install -y --no-install-recommends nginx prometheus" in line
    assert user.calls("apt-get") == []


def test_sudo_that_would_prompt_prints_one_line_instead_of_waiting(user: Machine) -> None:
    user.sudo(prompts=True)

    result = user.run("nginx")

    assert result.returncode != 0
    assert len(result.stderr.splitlines()) == 1
    assert "nginx" in result.stderr
    assert user.calls("sudo") == [["-n", "true"]]
    assert user.calls("apt-get") == []


def test_non_root_installs_through_non_interactive_sudo(user: Machine) -> None:
    user.sudo()

    result = user.run("nginx")

    assert result.returncode == 0, result.stderr
    apt_through_sudo = [args for args in user.calls("sudo") if "apt-get" in args]
    assert [args[:4] for args in apt_through_sudo] == [
        ["-n", "env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]
    ] * 2
    update, install = user.calls("apt-get")
    assert update[-1] == "update"
    assert _packages(install) == ["nginx"]


def test_unknown_command_is_refused_before_any_apt_call(root: Machine) -> None:
    result = root.run("nginx", "no-such-tool")

    assert result.returncode == 2
    assert "no-such-tool" in result.stderr
    assert root.log.read_text() == ""


def test_redis_server_is_installed_and_its_debian_service_stopped(root: Machine) -> None:
    assert root.run("redis-server").returncode == 0

    _, install = root.calls("apt-get")
    assert _packages(install) == ["redis-server"]
    stopped = [args[-1] for args in root.calls("systemctl") if "stop" in args]
    assert stopped == ["redis-server"]
