"""vagrant/Vagrantfile: Ruby syntax, ``vagrant validate``, and the keys it makes."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)

REPO = Path(__file__).resolve().parent.parent
VAGRANTFILE = REPO / "vagrant" / "Vagrantfile"


def test_vagrantfile_is_valid_ruby() -> None:
    ruby = shutil.which("ruby")
    if ruby is None:
        pytest.skip("ruby is not installed (CI installs it): cannot check the Vagrantfile syntax")
    res = subprocess.run([ruby, "-c", str(VAGRANTFILE)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "Syntax OK" in res.stdout


def test_vagrant_validate_and_generated_keys(tmp_path: Path) -> None:
    vagrant = shutil.which("vagrant")
    if vagrant is None:
        pytest.skip("vagrant is not installed (Debian 12: apt-get install vagrant)")
    # A copy, so that validation (which runs the Vagrantfile) makes its keys in tmp_path.
    work = tmp_path / "vagrant"
    work.mkdir()
    shutil.copy(VAGRANTFILE, work / "Vagrantfile")
    env = dict(os.environ, VAGRANT_HOME=str(tmp_path / "home"), VAGRANT_CHECKPOINT_DISABLE="1")
    res = subprocess.run(
        [vagrant, "validate"], cwd=work, env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "validated successfully" in res.stdout
    keys = work / ".keys"
    for name in ("a", "b"):
        priv = keys / f"{name}.pem"
        assert priv.stat().st_mode & 0o077 == 0
        key = load_pem_private_key(priv.read_bytes(), password=None)
        assert isinstance(key, Ed25519PrivateKey)
        pub = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        assert (keys / f"{name}.pub.pem").read_bytes() == pub
    assert (keys / "a.pem").read_bytes() != (keys / "b.pem").read_bytes()
