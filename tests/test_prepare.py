import hashlib
import http.server
import threading
import time
from functools import partial
from pathlib import Path

import pytest

from catdog import CatDogError
from catdog.prepare import label_of, main, prepare
from tests.conftest import jpeg_bytes, write_folder, write_zip


def tree(root: Path) -> dict[str, list[str]]:
    return {
        f"{p}/{c}": sorted(f.name for f in (root / p / c).iterdir())
        for p in ("train", "test")
        for c in ("cats", "dogs")
    }


def check_split(root: Path, per_class: int = 20) -> None:
    files = tree(root)
    for label in ("cats", "dogs"):
        assert len(files[f"test/{label}"]) == round(per_class * 0.2)
        assert len(files[f"train/{label}"]) + len(files[f"test/{label}"]) == per_class
        assert not set(files[f"train/{label}"]) & set(files[f"test/{label}"])
        assert all(name.startswith(label[:-1] + ".") for name in files[f"train/{label}"])
    report = (root / "prepare_report.txt").read_text()
    assert "skipped 3 file(s)" in report and "100.jpg\tempty file" in report and "101.jpg" in report


def test_labels_come_from_folders_or_names():
    assert label_of("PetImages/Cat/1.jpg") == "cats"
    assert label_of("train/dog.7.jpg") == "dogs"
    assert label_of("x/dogs/a.png") == "dogs"
    assert label_of("PetImages/Cat/Thumbs.db") is None
    assert label_of("train/.cat.1.jpg") is None
    assert label_of("sampleSubmission.csv") is None


def test_kaggle_zip(tmp_path, kaggle_files, capsys):
    source = write_zip(tmp_path / "train.zip", kaggle_files)
    before = source.read_bytes()
    root = prepare(source, tmp_path / "out", progress=False)
    check_split(root)
    assert source.read_bytes() == before  # the source is never modified
    out = capsys.readouterr().out
    assert "Found 32 images belonging to 2 classes." in out and "Found 8 images belonging to 2 classes." in out


def test_kaggle_competition_zip_with_train_zip_inside(tmp_path, kaggle_files):
    inner = write_zip(tmp_path / "train.zip", kaggle_files).read_bytes()
    source = write_zip(
        tmp_path / "dogs-vs-cats.zip", {"train.zip": inner, "test1.zip": b"", "sampleSubmission.csv": b""}
    )
    check_split(prepare(source, tmp_path / "out", progress=False))


def test_kaggle_folder_and_microsoft_layouts(tmp_path, kaggle_files):
    kaggle = write_folder(tmp_path / "kaggle", kaggle_files) / "train"
    microsoft = petimages(kaggle_files)
    microsoft["PetImages/Cat/Thumbs.db"] = b"junk"
    ms_zip = write_zip(tmp_path / "kagglecatsanddogs_5340.zip", microsoft)
    ms_folder = write_folder(tmp_path / "ms", microsoft) / "PetImages"

    results = [
        tree(prepare(src, tmp_path / f"out{i}", progress=False)) for i, src in enumerate((kaggle, ms_zip, ms_folder))
    ]
    for i in range(3):
        check_split(tmp_path / f"out{i}")
    assert results[0] == results[1] == results[2]  # same names, same split, whatever the layout


def test_split_is_deterministic_and_rerun_is_safe(tmp_path, kaggle_files, capsys):
    source = write_folder(tmp_path / "src", kaggle_files)
    a = tree(prepare(source, tmp_path / "a", seed=3, progress=False))
    assert tree(prepare(source, tmp_path / "b", seed=3, progress=False)) == a
    assert tree(prepare(source, tmp_path / "c", seed=4, progress=False)) != a
    prepare(source, tmp_path / "a", seed=3, progress=False)  # exists: left alone
    assert "nothing to do" in capsys.readouterr().out
    assert tree(prepare(source, tmp_path / "a", seed=4, force=True, progress=False)) == tree(tmp_path / "c")
    hidden = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert sorted(hidden) == [".a.lock", ".b.lock", ".c.lock"]  # no staging folders left; the lock files stay


def test_bad_sources_are_clear_errors(tmp_path):
    with pytest.raises(CatDogError, match="does not exist"):
        prepare(tmp_path / "missing.zip", tmp_path / "out")
    (tmp_path / "bad.zip").write_bytes(b"garbage")
    with pytest.raises(CatDogError, match="not a readable zip"):
        prepare(tmp_path / "bad.zip", tmp_path / "out")
    only_cats = write_folder(tmp_path / "cats_only", {"cat.1.jpg": jpeg_bytes(1)})
    with pytest.raises(CatDogError, match="need both"):
        prepare(only_cats, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_command_line(tmp_path, kaggle_files, capsys):
    """The settings are the data group's, as training reads them: data.source, data.root, data.test_fraction."""
    source = write_zip(tmp_path / "train.zip", kaggle_files)
    assert main([f"data.source={source}", f"data.root={tmp_path / 'out'}", "data.test_fraction=0.5"]) == 0
    assert len(list((tmp_path / "out/test/cats").iterdir())) == 10
    assert main([f"data.source={tmp_path / 'nope'}", f"data.root={tmp_path / 'out2'}"]) == 2
    assert main(["source=x.zip"]) == 2  # the old name
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]  # not the progress bar
    assert len(err) == 2 and "nope does not exist; give a zip, a folder, a URL or microsoft" in err[0]
    assert err[1].startswith("error: Could not override 'source'")


def petimages(kaggle_files: dict[str, bytes]) -> dict[str, bytes]:
    """The same pictures in Microsoft's layout: PetImages/Cat/12.jpg, PetImages/Dog/7.jpg."""
    files = {}
    for name, data in kaggle_files.items():
        animal, _, rest = Path(name).name.partition(".")
        if animal in ("cat", "dog"):
            files[f"PetImages/{animal.capitalize()}/{rest}"] = data
    return files


@pytest.fixture
def http_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_url_is_downloaded_verified_and_reused(tmp_path, kaggle_files, http_server):
    served, base = http_server
    data = write_zip(served / "kagglecatsanddogs_5340.zip", kaggle_files).read_bytes()
    url = f"{base}/kagglecatsanddogs_5340.zip"
    downloads = tmp_path / "downloads"

    with pytest.raises(CatDogError, match="SHA-256"):
        prepare(url, tmp_path / "out", sha256="0" * 64, download_dir=downloads, progress=False)
    assert not downloads.exists()  # a bad download leaves no file behind, nor the folder made for it

    sha = hashlib.sha256(data).hexdigest()
    check_split(prepare(url, tmp_path / "out", sha256=sha, download_dir=downloads, progress=False))
    assert (downloads / "kagglecatsanddogs_5340.zip").read_bytes() == data

    (served / "kagglecatsanddogs_5340.zip").unlink()  # the second run uses the file already downloaded
    check_split(prepare(url, tmp_path / "out2", download_dir=downloads, progress=False))

    with pytest.raises(CatDogError, match="cannot download"):
        prepare(f"{base}/missing.zip", tmp_path / "out3", download_dir=downloads, progress=False)


def test_zip_slip_and_absolute_paths_are_refused(tmp_path, kaggle_files):
    files = dict(kaggle_files)
    files["../../escaped/cat.500.jpg"] = jpeg_bytes(500)
    files["/abs/dog.501.jpg"] = jpeg_bytes(501)
    source = write_zip(tmp_path / "train.zip", files)
    root = prepare(source, tmp_path / "deep" / "out", progress=False)
    report = (root / "prepare_report.txt").read_text()
    assert report.count("zip-slip") == 2
    assert not any(p.name in ("cat.500.jpg", "dog.501.jpg") for p in tmp_path.rglob("*.jpg"))
    assert not (tmp_path / "escaped").exists()


def test_odd_but_valid_images_are_kept_and_loops_ignored(tmp_path, kaggle_files):
    from tests.test_data import odd_images

    source = write_folder(tmp_path / "PetImages", {f"Dog/{i}.jpg": jpeg_bytes(i) for i in range(5)})
    odd_images(source / "Cat")
    (source / "Cat" / "loop").symlink_to(source)  # a symlink loop in the source
    (source / "Horse").mkdir()  # a third class in the source is not a cat or a dog: ignored
    (source / "Horse" / "1.jpg").write_bytes(jpeg_bytes(1))
    root = prepare(source, tmp_path / "out", test_fraction=0.2, progress=False)
    files = tree(root)
    assert len(files["train/cats"]) + len(files["test/cats"]) == 10  # PNG/GIF/BMP/WebP named .jpg, CMYK, 16-bit...
    assert "skipped 0 file(s)" in (root / "prepare_report.txt").read_text()
    assert sorted(p.name for p in root.iterdir()) == ["prepare_report.txt", "test", "train"]


def test_two_runs_preparing_the_same_root_at_once_wait_for_each_other(tmp_path, kaggle_files, monkeypatch):
    """Two terminals or a sweep's parallel jobs: the second waits on the lock file for the first, then finds the
    tree complete; neither crashes nor sees a half-built tree."""
    import catdog.prepare as prepare_module

    source = write_zip(tmp_path / "train.zip", kaggle_files)
    root = tmp_path / "data" / "processed"
    second_arrived, builds, errors = threading.Event(), [], []
    real_copy = prepare_module._copy_decodable

    def copy(*args, **kwargs):  # the first build holds on until the second run is waiting (or building: no lock)
        builds.append(threading.current_thread().name)
        if len(builds) == 1:
            assert second_arrived.wait(30)
        else:
            second_arrived.set()
        return real_copy(*args, **kwargs)

    def say(*args, **kwargs):
        if "waiting for another process" in str(args[0]):
            second_arrived.set()

    def run() -> None:
        try:
            prepare(source, root, progress=False)
            assert tree(root) == expected  # complete as soon as prepare returns
        except BaseException as err:  # reported below, from the test's thread
            errors.append(err)

    expected = tree(prepare(source, tmp_path / "reference", progress=False))
    monkeypatch.setattr(prepare_module, "_copy_decodable", copy)
    monkeypatch.setattr(prepare_module, "print", say, raising=False)
    first = threading.Thread(target=run, name="first")
    first.start()
    while not builds:
        time.sleep(0.01)
    second = threading.Thread(target=run, name="second")
    second.start()
    first.join(60)
    second.join(60)
    assert not errors, errors
    assert builds == ["first"] and tree(root) == expected
    assert sorted(p.name for p in root.parent.iterdir()) == [".processed.lock", "processed"]  # no staging left


def test_the_default_source_is_downloaded_checked_and_prepared(tmp_path, kaggle_files, http_server, monkeypatch):
    """data.source=microsoft (the default of train and prepare) names Microsoft's URL: downloaded once into
    download_dir, its length checked, its PetImages/{Cat,Dog} layout prepared. A local server stands in for it."""
    import catdog.prepare as prepare_module

    served, base = http_server
    data = write_zip(served / "kagglecatsanddogs_5340.zip", petimages(kaggle_files)).read_bytes()
    monkeypatch.setitem(prepare_module.SOURCES, "microsoft", f"{base}/kagglecatsanddogs_5340.zip")
    monkeypatch.chdir(tmp_path)
    assert main(["data.root=data/processed_data"]) == 0  # with no data.source=: the default, microsoft
    check_split(tmp_path / "data" / "processed_data")
    assert (tmp_path / "data" / "downloads" / "kagglecatsanddogs_5340.zip").read_bytes() == data
    names = sorted(p.name for p in (tmp_path / "data" / "processed_data" / "train" / "cats").iterdir())
    assert names[0].startswith("cat.") and len(names) == 16

    from catdog.data import CatDogDataModule  # training prepares a missing root from its data.source the same way

    dm = CatDogDataModule(root=str(tmp_path / "data" / "again"), source="microsoft", num_workers=0)
    dm.prepare_data()
    check_split(tmp_path / "data" / "again")


def test_a_network_failure_is_one_line_naming_the_url_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    import socket

    import catdog.prepare as prepare_module

    with socket.socket() as closed:  # a port nobody listens on: the connection is refused
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/kagglecatsanddogs_5340.zip"
    monkeypatch.setitem(prepare_module.SOURCES, "microsoft", url)
    monkeypatch.chdir(tmp_path)
    assert main(["data.root=data/processed_data"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: cannot download {url}: ") and "refused" in line and "data.source=PATH" in line
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert files == ["data", "data/.processed_data.lock"]  # no .part file, no download folder, no half-made root
