"""A plain (non-editable) install ships the weights and finds them outside the repository."""
import os
import subprocess
import sys

from pathlib import Path

from conftest import ROOT


def test_wheel_installs_weights_as_package_data(tmp_path):
    wheel_dir, target = tmp_path / "wheel", tmp_path / "site"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheel_dir), str(ROOT)], check=True, env=env, cwd=tmp_path, timeout=600)
    wheel = next(wheel_dir.glob("vaecodec-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True, env=env, cwd=tmp_path, timeout=600)
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from vaecodec import weights\n"
            "d = weights.default_weights_dir(); m = weights.load()\n"
            "print(d); print(m.fingerprint.hex())\n") % str(target)
    env.pop("PYTHONPATH", None)
    env.pop("VAECODEC_WEIGHTS", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    where, fp = out.stdout.split()
    assert where.startswith(str(target)) and Path(where).parent.name == "pretrained"
    assert (Path(where) / "release.json").is_file()
    # the benchmark subpackage ships too (`vaecodec benchmark` imports it when it runs)
    assert {p.name for p in (target / "vaecodec" / "benchmark").glob("*.py")} == \
        {p.name for p in (ROOT / "vaecodec" / "benchmark").glob("*.py")}
    from vaecodec.codec import get_model
    assert fp == get_model().fingerprint.hex()
