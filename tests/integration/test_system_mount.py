"""trolleyfs as a system filesystem: mount(8) with -t and from an fstab file, umount, credentials."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import need_tool
from trolleyfs.testing.data import SampleSpec, generate
from trolleyfs.testing.orthanc import Orthanc, orthanc_missing


def daemons_for(mountpoint: Path) -> list[str]:
    found = subprocess.run(["pgrep", "-f", f"trolleyfs mount .* {mountpoint}"], capture_output=True, text=True)
    return found.stdout.split()


def wait_gone(pids: list[str], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not any(Path(f"/proc/{pid}").exists() for pid in pids)


def proc_mounts_line(mountpoint: Path) -> str:
    return next((line for line in Path("/proc/mounts").read_text().splitlines() if f" {mountpoint} " in line), "")


def helper_installed() -> None:
    need_tool("mount")
    if not (Path("/usr/sbin/mount.trolleyfs").exists() and Path("/usr/sbin/mount.fuse.trolleyfs").exists()):
        from tests.conftest import unavailable

        unavailable("mount.trolleyfs is not installed in /usr/sbin (scripts/setup.sh does it)")


def read_one_file(mountpoint: Path, orthanc: Orthanc, orthanc_instances: list[dict]) -> None:
    instance = orthanc_instances[0]
    path = next(p for p in (mountpoint / "patients").rglob("*.dcm") if instance["SOPInstanceUID"] in p.name)
    assert path.read_bytes() == orthanc.file(instance["id"])


@pytest.mark.parametrize("fs_type", ["trolleyfs", "fuse.trolleyfs"])
def test_mount_t_reads_a_file_and_umount_leaves_no_daemon(fuse_available, orthanc, orthanc_instances, tmp_path, fs_type):
    helper_installed()
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    subprocess.run(
        ["mount", "-t", fs_type, orthanc.dicomweb_url, str(mountpoint), "-o", f"cache_dir={tmp_path / 'cache'},nofail"],
        check=True, timeout=60,
    )
    pids = daemons_for(mountpoint)
    try:
        line = proc_mounts_line(mountpoint)
        assert line.startswith(f"{orthanc.dicomweb_url} {mountpoint} fuse.trolleyfs ro,")
        read_one_file(mountpoint, orthanc, orthanc_instances)
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)
    assert pids and wait_gone(pids)
    assert not os.path.ismount(mountpoint)


def test_an_fstab_line_mounts(fuse_available, orthanc, orthanc_instances, tmp_path):
    helper_installed()
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    config = tmp_path / "pacs.toml"
    config.write_text(f'cache_dir = "{tmp_path / "cache"}"\nlisting_ttl = 30\n')
    fstab = tmp_path / "fstab"
    fstab.write_text(
        f"{orthanc.dicomweb_url} {mountpoint} trolleyfs noauto,_netdev,x-systemd.automount,config={config} 0 0\n"
    )
    subprocess.run(["mount", "-T", str(fstab), str(mountpoint)], check=True, timeout=60)
    pids = daemons_for(mountpoint)
    try:
        read_one_file(mountpoint, orthanc, orthanc_instances)
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)
    assert pids and wait_gone(pids)


def test_an_unknown_option_is_refused_by_the_helper(fuse_available, orthanc, tmp_path):
    helper_installed()
    result = subprocess.run(
        ["mount", "-t", "trolleyfs", orthanc.dicomweb_url, str(tmp_path), "-o", "cache_sise=1G"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "cache_sise" in result.stderr


@pytest.fixture(scope="module")
def orthanc_with_password(tmp_path_factory):
    if reason := orthanc_missing():
        from tests.conftest import unavailable

        unavailable(reason)
    server = Orthanc(
        tmp_path_factory.mktemp("orthanc-auth"),
        extra_config={"AuthenticationEnabled": True, "RegisteredUsers": {"reader": "s3cret-Pa55"}},
    )
    server.start()
    server.upload(generate(SampleSpec(patients=(("AUTH-001", "AUTH^TEST"),), studies_per_patient=1,
                                      series_per_study=1, instances_per_series=3)))
    yield server
    server.stop()


def credentials(tmp_path: Path, password: str, mode: int = 0o600) -> Path:
    path = tmp_path / "credentials.toml"
    path.write_text(f'username = "reader"\npassword = "{password}"\n')
    path.chmod(mode)
    return path


def background_mount(source: str, mountpoint: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["trolleyfs", "mount", source, str(mountpoint), "-o", ",".join(options)],
        capture_output=True, text=True, timeout=60,
    )


def mount_with_password(orthanc: Orthanc, tmp_path: Path, password: str) -> tuple[Path, subprocess.CompletedProcess]:
    need_tool("trolleyfs")
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    secret_file = credentials(tmp_path, password)
    return mountpoint, background_mount(
        orthanc.dicomweb_url, mountpoint, f"credentials_file={secret_file}", f"cache_dir={tmp_path / 'c'}"
    )


def test_credentials_file_mounts_and_no_secret_shows(fuse_available, orthanc_with_password, tmp_path):
    mountpoint, result = mount_with_password(orthanc_with_password, tmp_path, "s3cret-Pa55")
    assert result.returncode == 0, result.stderr
    try:
        files = list((mountpoint / "patients").rglob("*.dcm"))
        assert len(files) == 3
        assert files[0].read_bytes()[128:132] == b"DICM"
        ps = subprocess.run(["ps", "auxww"], capture_output=True, text=True).stdout
        assert "s3cret-Pa55" not in ps
        assert "s3cret-Pa55" not in Path("/proc/mounts").read_text()
        log = tmp_path / "c" / "trolleyfs.log"
        assert "s3cret-Pa55" not in (log.read_text() if log.exists() else "")
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def test_a_wrong_password_fails_the_mount_with_one_line(fuse_available, orthanc_with_password, tmp_path):
    mountpoint, result = mount_with_password(orthanc_with_password, tmp_path, "wrong")
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "401" in result.stderr and "credentials" in result.stderr
    assert not os.path.ismount(mountpoint)


def test_secrets_are_refused_on_the_command_line_and_in_open_files(orthanc_with_password, tmp_path):
    need_tool("trolleyfs")
    result = background_mount(orthanc_with_password.dicomweb_url, tmp_path, "username=reader", "password=s3cret-Pa55")
    assert result.returncode == 2 and "password may not be given on the command line" in result.stderr
    loose = credentials(tmp_path, "s3cret-Pa55", mode=0o644)
    result = background_mount(orthanc_with_password.dicomweb_url, tmp_path, f"credentials_file={loose}")
    assert result.returncode == 2 and "readable by others" in result.stderr


def run_as_nobody(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *argv],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=60)


@pytest.fixture
def shared_mount(fuse_available):
    """Mounts under a directory every user may traverse (pytest's own tmp is private to root)."""
    from tests.mounting import MountFactory

    base = Path(tempfile.mkdtemp(prefix="trolleyfs-shared-"))
    base.chmod(0o755)
    factory = MountFactory(base)
    yield factory
    factory.unmount_all()
    shutil.rmtree(base, ignore_errors=True)


def test_only_the_mounting_user_sees_files_unless_allow_other(shared_mount, pacs):
    need_tool("setpriv")
    mount = shared_mount
    base = mount.tmp_path
    private = mount(pacs.dicomweb_url, cache_dir=base / "c1")
    file = private.files()[0]
    assert run_as_nobody("cat", str(file)).returncode != 0
    shared = mount(pacs.dicomweb_url, cache_dir=base / "c2", allow_other="true", uid=4321, gid=4321, umask="022")
    file = shared.files()[0]
    assert (file.stat().st_uid, file.stat().st_gid, oct(file.stat().st_mode & 0o777)) == (4321, 4321, "0o444")
    assert run_as_nobody("cat", str(file)).returncode == 0
    closed = mount(pacs.dicomweb_url, cache_dir=base / "c3", allow_other="true", umask="077")
    file = closed.files()[0]
    assert oct(file.stat().st_mode & 0o777) == "0o400"
    denied = run_as_nobody("cat", str(file))
    assert denied.returncode != 0 and "Permission denied" in denied.stderr


@pytest.fixture
def pacs_with_tls(sample_files, tmp_path):
    """The embedded PACS over https with a self-signed certificate (Orthanc 1.10.1 with SslEnabled
    crashes on this Debian build, so the embedded PACS plays the TLS server)."""
    import ssl

    from trolleyfs.testing.pacs import EmbeddedPacs

    openssl = need_tool("openssl")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with EmbeddedPacs(sample_files, tls=context) as server:
        server.ca = cert
        yield server


def test_https_with_a_private_ca(fuse_available, pacs_with_tls, tmp_path):
    need_tool("trolleyfs")
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    url = pacs_with_tls.dicomweb_url
    assert url.startswith("https://")
    result = background_mount(url, mountpoint, f"ca_bundle={pacs_with_tls.ca}", f"cache_dir={tmp_path / 'c'}")
    assert result.returncode == 0, result.stderr
    try:
        files = list((mountpoint / "patients").rglob("*.dcm"))
        assert len(files) == len(pacs_with_tls.instances)
        assert files[0].read_bytes()[128:132] == b"DICM"
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)
    untrusted = background_mount(url, mountpoint, f"cache_dir={tmp_path / 'c2'}")
    assert untrusted.returncode == 1 and "certificate is not trusted" in untrusted.stderr
