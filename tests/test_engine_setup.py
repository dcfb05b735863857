"""The add-on's engine environment builder, against a folder of tiny wheels made here (no network):
it makes the venv, installs, reports progress, survives a cancel, refuses an incomplete folder
or a download without online access; and what it plans for each kind of machine."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from inve_blender.io import engine_setup as es
from inve_blender.io.engine_setup import EngineInstaller, Machine


# ---------------------------------------------------------------------------------------------
# tiny wheels

def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def make_wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    """A pure-Python wheel with one module ``<name>_mod`` that knows its own version."""
    dist = name.replace("-", "_")
    files = {
        f"{dist}_mod/__init__.py": f"VERSION = {version!r}\n".encode(),
        f"{dist}-{version}.dist-info/METADATA": ("Metadata-Version: 2.1\n"
                                                 f"Name: {name}\nVersion: {version}\n"
                                                 + "".join(f"Requires-Dist: {r}\n" for r in requires)).encode(),
        f"{dist}-{version}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: inve-test\nRoot-Is-Purelib: true\n"
                                             b"Tag: py3-none-any\n",
    }
    record = f"{dist}-{version}.dist-info/RECORD"
    lines = [_record_line(n, d) for n, d in files.items()] + [f"{record},,"]
    files[record] = ("\n".join(lines) + "\n").encode()
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for n, d in files.items():
            z.writestr(n, d)
    return path


REQS = ["inve-fake-torch==2.13.0", "inve_fake_numpy>=1.26,<3"]


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("wheels")
    make_wheel(d, "inve-fake-torch", "2.13.0", ("inve-fake-sympy>=1",))
    make_wheel(d, "inve-fake-sympy", "1.13.0")
    make_wheel(d, "inve-fake-numpy", "2.2.6")
    make_wheel(d, "inve-fake-numpy", "1.25.0")  # too old for the pin: pip must pick 2.2.6
    return d


def quiet_env() -> dict[str, str]:
    """This process's environment without pip's configuration (the machine's own find-links and
    indexes), so the test sees exactly the folder it built."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def installer(home: Path, wheels: Path | None, **kw: object) -> EngineInstaller:
    return EngineInstaller(home, REQS, wheels_dir=wheels, base_python=sys.executable, environ=quiet_env(), **kw)


def venv_import(home: Path, module: str) -> str:
    out = subprocess.run([str(es.venv_python(home)), "-c", f"import {module}; print({module}.VERSION)"],
                         capture_output=True, text=True, timeout=60, env=quiet_env())
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


# ---------------------------------------------------------------------------------------------
# offline installs

def test_offline_install_creates_the_env_with_progress_and_a_log(tmp_path: Path, wheels: Path) -> None:
    home = tmp_path / "engine"
    events: list[es.Progress] = []
    inst = installer(home, wheels, allow_online=False, on_progress=events.append)
    assert es.env_state(home, REQS).status == "missing"
    result = inst.run()
    assert result.ok, result.error
    assert result.finished and not result.cancelled and result.fraction == 1.0
    # a real venv of its own, holding the requirement, its dependency, and numpy at the pinned version
    assert es.venv_python(home).is_file() and es.venv_python(home) != Path(sys.executable)
    assert venv_import(home, "inve_fake_torch_mod") == "2.13.0"
    assert venv_import(home, "inve_fake_sympy_mod") == "1.13.0"
    assert venv_import(home, "inve_fake_numpy_mod") == "2.2.6"
    # progress: the stages in order, a bar that never goes back, packages counted, a size at the end
    stages = [e.stage for e in events]
    assert stages.index("venv") < stages.index("packages") < stages.index("installing") < stages.index("done")
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and 0 < fractions[len(fractions) // 2] < 1
    assert max(e.packages for e in events) >= 3
    assert any("inve_fake_torch" in e.current or "inve-fake-torch" in e.current for e in events)
    assert result.size_bytes == es.dir_size(home / "venv") and result.size_bytes > 1_000_000
    # the state the panel reads, and a log the user can open
    st = es.env_state(home, REQS)
    assert st.ready and st.python == es.venv_python(home)
    assert json.loads((home / es.MARKER).read_text())["requirements"] == REQS
    log = inst.log_path.read_text()
    assert "--no-index" in log and "Successfully installed" in log and "result: done" in log
    # a changed requirement list makes it outdated; a second install reuses the venv
    assert es.env_state(home, [*REQS, "inve-fake-extra"]).status == "outdated"
    again = installer(home, wheels, allow_online=False).run()
    assert again.ok, again.error
    assert inst.log_path.read_text().count(" -m venv ") == 1  # the venv was reused, not made again


def test_cancel_leaves_it_incomplete_and_a_second_run_recovers(tmp_path: Path, wheels: Path) -> None:
    home = tmp_path / "engine"
    inst: EngineInstaller

    def cancel_once_pip_runs(p: es.Progress) -> None:
        if p.stage == "packages" and p.packages >= 1:
            inst.cancel()

    inst = installer(home, wheels, on_progress=cancel_once_pip_runs)
    inst.start()
    result = inst.wait(timeout=180)
    assert result.finished and result.cancelled and not result.ok and result.stage == "cancelled"
    assert not (home / es.MARKER).exists()
    assert es.env_state(home, REQS).status == "incomplete"
    assert "result: cancelled" in inst.log_path.read_text()
    assert not (home / es.LOCK_NAME).exists()
    # the next click finishes the job
    result2 = installer(home, wheels).run()
    assert result2.ok, result2.error
    assert es.env_state(home, REQS).ready
    assert venv_import(home, "inve_fake_numpy_mod") == "2.2.6"


def test_cancel_during_venv_creation_then_recover(tmp_path: Path, wheels: Path) -> None:
    home = tmp_path / "engine"
    inst: EngineInstaller

    def cancel_in_venv(p: es.Progress) -> None:
        if p.stage == "venv":
            inst.cancel()

    inst = installer(home, wheels, on_progress=cancel_in_venv)
    result = inst.run()
    assert result.cancelled and not (home / es.MARKER).exists()
    assert es.env_state(home, REQS).status in ("missing", "incomplete")
    assert installer(home, wheels).run().ok
    assert es.env_state(home, REQS).ready


def test_refuses_a_folder_that_lacks_a_requirement(tmp_path: Path, wheels: Path) -> None:
    partial = tmp_path / "partial"
    partial.mkdir()
    for w in wheels.glob("inve_fake_numpy-*.whl"):
        (partial / w.name).write_bytes(w.read_bytes())
    home = tmp_path / "engine"
    result = installer(home, partial).run()
    assert not result.ok and result.finished
    assert "no wheel for inve-fake-torch" in result.error and str(partial) in result.error
    assert "\n" not in result.error
    assert not (home / "venv").exists()  # refused before touching anything
    assert "no wheel for inve-fake-torch" in (home / es.LOG_NAME).read_text()


def test_pip_error_names_the_requirement(tmp_path: Path, wheels: Path) -> None:
    """The folder has a wheel of every name, but not the version the pins ask for."""
    old = tmp_path / "old"
    old.mkdir()
    make_wheel(old, "inve-fake-torch", "2.0.0")
    make_wheel(old, "inve-fake-numpy", "1.25.0")
    result = installer(tmp_path / "engine", old).run()
    assert not result.ok and not result.cancelled
    assert "inve-fake-torch" in result.error and "\n" not in result.error
    assert es.env_state(tmp_path / "engine", REQS).status == "incomplete"


def test_no_download_without_online_access(tmp_path: Path) -> None:
    home = tmp_path / "engine"
    result = EngineInstaller(home, REQS, allow_online=False, base_python=sys.executable,
                             machine=Machine("Linux", "x86_64", False)).run()
    assert not result.ok and "Allow Online Access" in result.error
    assert not (home / "venv").exists()
    assert "pip" not in (home / es.LOG_NAME).read_text().replace("pip download", "")


def test_missing_folder_and_intel_mac_are_one_line(tmp_path: Path) -> None:
    r = EngineInstaller(tmp_path / "e", REQS, wheels_dir=tmp_path / "nope").run()
    assert r.error.startswith("Wheels folder not found")
    r = EngineInstaller(tmp_path / "e2", REQS, allow_online=True, machine=Machine("Darwin", "x86_64", False)).run()
    assert "Intel Macs" in r.error and "\n" not in r.error
    assert not (tmp_path / "e2" / "venv").exists()


# ---------------------------------------------------------------------------------------------
# plans, folders, Pythons (pure)

@pytest.mark.parametrize("machine, build, index", [
    (Machine("Linux", "x86_64", True), "cuda", es.TORCH_INDEX["cuda"]),
    (Machine("Windows", "x86_64", True), "cuda", es.TORCH_INDEX["cuda"]),
    (Machine("Linux", "x86_64", False), "cpu", es.TORCH_INDEX["cpu"]),
    (Machine("Windows", "x86_64", False), "cpu", es.TORCH_INDEX["cpu"]),
    (Machine("Linux", "arm64", False), "cpu", es.TORCH_INDEX["cpu"]),
    (Machine("Darwin", "arm64", False), "mps", None),
])
def test_plan_per_platform(machine: Machine, build: str, index: str | None) -> None:
    plan = es.plan_install(machine)
    assert plan.supported and plan.torch_build == build and plan.torch_index == index
    assert plan.approx_gb > 0 and "GB" in plan.description


def test_plan_intel_mac_is_unsupported() -> None:
    plan = es.plan_install(Machine("Darwin", "x86_64", False))
    assert not plan.supported and "Intel Mac" in plan.description


def test_online_steps_take_torch_from_the_plans_index(tmp_path: Path) -> None:
    reqs = ["torch==2.13.0", "numpy>=1.26,<3", "imageio>=2.31"]
    for machine, index in ((Machine("Linux", "x86_64", True), es.TORCH_INDEX["cuda"]),
                           (Machine("Darwin", "arm64", False), None)):
        pip_step, *steps = EngineInstaller(tmp_path, reqs, allow_online=True, machine=machine).steps("py")
        assert pip_step.args[-2:] == ["--upgrade", "pip"]
        assert [s.args[-1] for s in steps][0] == "torch==2.13.0"
        assert ("--extra-index-url" in steps[0].args) == (index is not None)
        if index:
            assert steps[0].args[steps[0].args.index("--extra-index-url") + 1] == index
        assert steps[1].args[-2:] == ["-r", str(tmp_path / "requirements.txt")]
        assert abs(sum(s.share for s in [pip_step, *steps]) - 1.0) < 1e-9
    offline = EngineInstaller(tmp_path, reqs, wheels_dir=tmp_path).steps("py")
    assert len(offline) == 1 and "--no-index" in offline[0].args and "--find-links" in offline[0].args


def test_detect_machine_reads_the_driver() -> None:
    yes = subprocess.CompletedProcess([], 0, stdout="GPU 0: NVIDIA RTX (UUID: x)\n", stderr="")
    no = subprocess.CompletedProcess([], 9, stdout="", stderr="NVIDIA-SMI has failed")
    m = es.detect_machine(run=lambda *a, **k: yes, which=lambda n: "/usr/bin/nvidia-smi", exists=lambda p: False)
    if m.system in ("Linux", "Windows"):
        assert m.nvidia_gpu
        assert not es.detect_machine(run=lambda *a, **k: no, which=lambda n: "/x", exists=lambda p: False).nvidia_gpu
        assert not es.detect_machine(which=lambda n: None, exists=lambda p: False).nvidia_gpu
    assert m.arch in ("x86_64", "arm64") or m.arch


def test_default_home_is_per_user_and_outside_blender() -> None:
    assert es.default_home("Linux", {}, "/home/u") == Path("/home/u/.local/share/inve-blender/engine")
    assert es.default_home("Linux", {"XDG_DATA_HOME": "/d"}, "/home/u") == Path("/d/inve-blender/engine")
    assert es.default_home("Darwin", {}, "/Users/u") == Path("/Users/u/Library/Application Support/inve-blender/engine")
    assert es.default_home("Windows", {"LOCALAPPDATA": "C:/Users/u/AppData/Local"}, "C:/Users/u") == \
        Path("C:/Users/u/AppData/Local/inve-blender/engine")
    assert es.default_home("Linux", {es.HOME_ENV: "/studio/engine"}, "/home/u") == Path("/studio/engine")
    assert es.venv_python(Path("/e"), "Windows") == Path("/e/venv/Scripts/python.exe")
    assert es.venv_python(Path("/e"), "Linux") == Path("/e/venv/bin/python")


def test_folder_check_normalises_names(tmp_path: Path) -> None:
    for n in ("opencv_python_headless-4.11.0.86-cp37-abi3-manylinux_2_28_x86_64.whl",
              "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl", "imageio_ffmpeg-0.5.1.tar.gz"):
        (tmp_path / n).write_bytes(b"")
    assert es.check_wheels_folder(tmp_path, ["torch==2.13.0", "opencv-python-headless>=4.8,<4.12",
                                             "imageio-ffmpeg>=0.5"]) is None
    msg = es.check_wheels_folder(tmp_path, ["torch==2.13.0", "numpy>=1.26,<3", "tqdm>=4.60"])
    assert msg is not None and "numpy, tqdm" in msg and "torch" not in msg.split("no wheel for")[1]


def test_find_base_python_prefers_a_system_python() -> None:
    versions = {"/usr/bin/python3.13": (3, 13), "/usr/bin/python3.9": (3, 9), "/blender/python3.11": (3, 11)}
    ver = versions.get
    assert es.find_base_python("/blender/python3.11", ["/usr/bin/python3.9", "/usr/bin/python3.13"],
                               version=ver) == "/usr/bin/python3.13"
    assert es.find_base_python("/blender/python3.11", ["/usr/bin/python3.9"], version=ver) == "/blender/python3.11"
    assert es.find_base_python(None, ["/usr/bin/python3.9"], version=ver) is None
    assert es.python_version(sys.executable) == sys.version_info[:2]


def test_broken_base_python_is_reported(tmp_path: Path) -> None:
    home = tmp_path / "engine"
    py = es.venv_python(home)
    py.parent.mkdir(parents=True)
    py.write_text("")
    (home / "venv" / "pyvenv.cfg").write_text(f"home = {tmp_path / 'gone-blender' / 'bin'}\n")
    (home / es.MARKER).write_text(json.dumps({"requirements": REQS, "base_python": "/gone-blender/bin/python3.11"}))
    st = es.env_state(home, REQS)
    assert st.status == "broken" and "/gone-blender/bin/python3.11" in st.message


def test_pip_output_progress_parsing() -> None:
    p = es.Progress()
    out = es.PipOutput(p, base=0.05, share=0.95, expected_packages=2)
    lines = ["Looking in indexes: https://download.pytorch.org/whl/cpu",
             "Collecting torch==2.13.0",
             "  Downloading https://download.pytorch.org/whl/cpu/torch-2.13.0%2Bcpu-cp311-cp311-linux_x86_64.whl "
             "(190.5 MB)",
             "Progress 1048576 of 190500000"]
    for ln in lines:
        out.feed(ln)
    assert p.current.startswith("torch-2.13.0") and p.bytes_total == 190_500_000 and p.bytes_done == 1_048_576
    assert "MB" in p.text() and 0.05 < p.fraction < 0.9
    before = p.fraction
    for ln in ["Collecting sympy (from torch==2.13.0)", "  Downloading sympy-1.13.3-py3-none-any.whl (6.2 MB)",
               "Installing collected packages: sympy, torch", "ERROR: pip's dependency resolver ...",
               "Successfully installed sympy-1.13.3 torch-2.13.0+cpu"]:
        out.feed(ln)
    assert p.fraction == 1.0 and p.fraction >= before and p.packages == 2
    assert p.downloaded == 190_500_000 + 6_200_000
    assert out.errors == ["pip's dependency resolver ..."]
