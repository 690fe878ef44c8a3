import os
import stat
from pathlib import Path

import pytest

from catdog.files import atomic_write, write_text


def test_a_write_that_dies_halfway_leaves_the_old_file_whole(tmp_path):
    target = write_text(tmp_path / "metrics.json", '{"old": true}')

    def dies_halfway(tmp):
        with open(tmp, "w") as f:
            f.write('{"new": ')
        raise KeyboardInterrupt  # the process is stopped mid-write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, dies_halfway)
    assert target.read_text() == '{"old": true}'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left behind
    write_text(target, "new")
    assert target.read_text() == "new"


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_get_the_usual_permissions_not_owner_only(tmp_path, umask):
    old = os.umask(umask)
    try:
        text = write_text(tmp_path / "index.html", "<p>page</p>")
        binary = atomic_write(tmp_path / "a.npz", lambda tmp: Path(tmp).write_bytes(b"\0"))
        plain = tmp_path / "plain.txt"
        plain.write_text("as open() makes it")
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    assert stat.S_IMODE(plain.stat().st_mode) == expected
    assert stat.S_IMODE(text.stat().st_mode) == expected and stat.S_IMODE(binary.stat().st_mode) == expected
