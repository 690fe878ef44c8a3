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
