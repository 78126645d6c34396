"""The Vulkan driver LiteRT's GPU accelerator runs on (targets/litert_gpu.py).

ai-edge-litert 2.3's GPU accelerator (`libLiteRtWebGpuAccelerator.so`: WebGPU through Dawn) needs
a Vulkan loader (`libvulkan.so.1`) and a Vulkan driver (an ICD) that Dawn accepts. A machine with a
real GPU and its vendor's ICD uses that one. Elsewhere, SwiftShader (Google's software Vulkan,
shipped in Debian's `chromium-common`) is the driver: Dawn accepts it; Mesa's llvmpipe (lavapipe)
it refuses ("Vulkan shaderUniform*ArrayDynamicIndexing required ... No adapters found"), so a
lavapipe ICD does not count as a driver here.

`python -m mobilegen.targets.vulkan_driver --install` (the Makefile runs it) installs SwiftShader
with apt where no driver is found; it never fails the build: without apt or root it prints why,
and the GPU tests then fail with that line.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

SWIFTSHADER_ICD = Path("/usr/lib/chromium/vk_swiftshader_icd.json")  # Debian's chromium-common
ICD_DIRS = ("/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d", "/usr/local/share/vulkan/icd.d")
# ICDs that are no GPU for Dawn: lavapipe (refused, see above) and test doubles
NOT_A_GPU = ("lvp", "llvmpipe", "lavapipe", "mock", "swiftshader")
APT_PACKAGES = ("chromium-common", "libvulkan1")  # SwiftShader + the Vulkan loader
ENV = "VK_ICD_FILENAMES"


@dataclass(frozen=True)
class Driver:
    """Where LiteRT's GPU accelerator can run: the ICD to select (None: the loader's default, a
    system GPU driver), its kind, or why there is none (`reason`)."""

    kind: str  # "system-gpu" | "swiftshader" | "env" | "none"
    icd: str | None = None
    reason: str = ""

    @property
    def found(self) -> bool:
        return self.kind != "none"

    def env(self) -> dict[str, str]:
        """Environment for a process that runs the accelerator."""
        return {ENV: self.icd} if self.icd else {}

    def describe(self) -> str:
        if not self.found:
            return self.reason
        return {"system-gpu": f"system Vulkan GPU driver ({self.icd})",
                "swiftshader": f"SwiftShader software Vulkan ({self.icd})",
                "env": f"{ENV}={self.icd}"}[self.kind]


def _loader_present() -> bool:
    try:
        ctypes.CDLL("libvulkan.so.1")
    except OSError:
        return False
    return True


def system_gpu_icds() -> list[str]:
    """Installed Vulkan ICDs of real GPUs (not lavapipe, not SwiftShader)."""
    found = []
    for d in ICD_DIRS:
        for p in sorted(glob.glob(os.path.join(d, "*.json"))):
            if not any(k in Path(p).name.lower() for k in NOT_A_GPU):
                found.append(p)
    return found


def find_driver() -> Driver:
    """The driver this host offers, in order: an ICD the user chose ($VK_ICD_FILENAMES), a real
    GPU's ICD, SwiftShader; else Driver("none") with the reason and the fix."""
    if not _loader_present():
        return Driver("none", reason="no Vulkan loader (libvulkan.so.1) on this host: LiteRT's GPU "
                      "accelerator cannot start; install it with `make setup` as root (apt: "
                      f"{' '.join(APT_PACKAGES)})")
    chosen = os.environ.get(ENV)
    if chosen:
        missing = [p for p in chosen.split(os.pathsep) if not Path(p).is_file()]
        if missing:
            return Driver("none", reason=f"{ENV} names {missing[0]}, which does not exist")
        return Driver("env", chosen)
    gpus = system_gpu_icds()
    if gpus:
        return Driver("system-gpu", os.pathsep.join(gpus))
    if SWIFTSHADER_ICD.is_file():
        return Driver("swiftshader", str(SWIFTSHADER_ICD))
    return Driver("none", reason="no Vulkan driver Dawn accepts on this host (no GPU ICD, no "
                  f"SwiftShader at {SWIFTSHADER_ICD}; Mesa's lavapipe is refused by Dawn): install "
                  f"it with `make setup` as root (apt: {' '.join(APT_PACKAGES)})")


def install() -> tuple[bool, str]:
    """Install SwiftShader with apt where no driver is found. (found, one line) — never raises:
    the build goes on without the driver and the GPU tests say why."""
    driver = find_driver()
    if driver.found:
        return True, f"vulkan driver: {driver.describe()}"
    apt = shutil.which("apt-get")
    if apt is None:
        return False, f"warning: {driver.reason} (apt-get is not available here)"
    if os.geteuid() != 0:
        return False, f"warning: {driver.reason} (not root: run `make setup` as root)"
    cmd = [apt, "install", "-y", "-q", "--no-install-recommends", *APT_PACKAGES]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for attempt in (cmd, None):  # a fresh machine may have no package lists: update, retry once
        if attempt is None:
            subprocess.run([apt, "update", "-q"], env=env, capture_output=True, check=False)
            attempt = cmd
        done = subprocess.run(attempt, env=env, capture_output=True, text=True, check=False)
        if done.returncode == 0:
            break
    driver = find_driver()
    if driver.found:
        return True, f"vulkan driver installed: {driver.describe()}"
    tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
    return False, f"warning: {driver.reason} (apt-get install failed: {tail[0]})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--install", action="store_true",
                        help="install SwiftShader with apt if no driver is found (never fails)")
    args = parser.parse_args(argv)
    if args.install:
        _, line = install()
    else:
        line = find_driver().describe()
    print(line, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
