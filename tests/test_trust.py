"""Hostile input, leaked credentials and silently wrong publishing (issue 13, first half).

Each test states a case that the pipeline got wrong: paths taken from data that lead outside
their root, the hub token sent where it does not belong, a target that no longer mirrors
what was verified, two packs into one folder, settings accepted that the encoder ignores,
and errors that printed a traceback instead of one line.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.build import build, verify_step
from pipeline.codec.encoded import MANIFEST_FILE, EncodedCube, FolderStore
from pipeline.codec.options import EncodeOptions
from pipeline.errors import CubecastError, PublishError, RecipeError
from pipeline.publish.targets import publish
from pipeline.recipe import load_recipe, parse_recipe
from pipeline.sources.download import download
from pipeline.sources.hub_auth import auth_headers
from pipeline.sources.mirror import FsspecMirror, HttpMirror, LocalMirror
from pipeline.sources.twins import write_dynamicearthnet
from pipeline.taco.pack import DatasetInfo, encode_sample, pack_shards, stage_sample
from tests.conftest import s2_like
from tests.fakehub import FakeHub
from tests.rangeserver import RangeServer

TOKEN = "hf_trust_secret_token_42"
CLI = [sys.executable, "-m", "pipeline.cli"]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )


def assert_one_line_error(r: subprocess.CompletedProcess, *words: str) -> None:
    """Non-zero exit, no traceback, and the error is the last line, whole, naming ``words``
    (progress lines before it are fine)."""
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert [ln for ln in lines if ln.startswith("error:")] == lines[-1:], r.stderr
    for w in words:
        assert w in lines[-1], r.stderr


# -- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """A small encoded cube (in-process engine), measured: the unit that is staged/packed."""
    ds = s2_like(t=4, h=16, w=16)
    work = tmp_path_factory.mktemp("enc")
    return encode_sample(ds, EncodeOptions(crf=30, engine="pyav"), cube_id="c0", workdir=work)


@pytest.fixture(scope="module")
def cube_folder(sample, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cube") / "c0"
    sample.encoded.to_folder(folder)
    return folder


@pytest.fixture(scope="module")
def twin(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("den")
    write_dynamicearthnet(root, cubes=2, frames=12, size=32, progress=False)
    return root


def _recipe(twin: Path, **codec):
    data = load_recipe("dynamicearthnet", location=str(twin)).model_dump()
    data["source"]["cubes"] = {"count": 2}
    data["shards"]["split_size"] = "60KB"  # several shards and a .tacocat
    data["codec"].update(codec)
    return parse_recipe(data)


@pytest.fixture(scope="module")
def built(twin, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("built")
    result = build(_recipe(twin), out, progress=False)
    assert result.verification.passed
    return out


@pytest.fixture
def folder(built, tmp_path) -> Path:
    dest = tmp_path / "ds"
    shutil.copytree(built, dest, ignore=shutil.ignore_patterns(".work"))
    return dest


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_DISABLE_XET", True)
    with FakeHub(TOKEN) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        yield server


# -- 1. paths from data stay inside their root ---------------------------------------------
def test_http_mirror_index_cannot_write_outside_the_cache(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "x").write_bytes(b"payload")
    sha = hashlib.sha256(b"payload").hexdigest()
    (site / "SHA256SUMS").write_text(f"{sha}  ../../x\n")
    cache = tmp_path / "cache" / "a" / "b"
    with RangeServer(site) as server:
        mirror = HttpMirror(server.url, cache, progress=False)
        with pytest.raises(CubecastError, match=r"\.\./\.\./x"):
            mirror.fetch("../../x")
    assert not (tmp_path / "cache" / "x").exists()


def test_local_and_fsspec_mirrors_refuse_escaping_paths(tmp_path):
    (tmp_path / "secret.txt").write_text("secret")
    src = tmp_path / "src"
    src.mkdir()
    with pytest.raises(CubecastError, match="relative path"):
        LocalMirror(src).fetch("../secret.txt")
    with pytest.raises(CubecastError, match="relative path"):
        LocalMirror(src).fetch(str(tmp_path / "secret.txt"))
    fsm = FsspecMirror(f"file://{src}", tmp_path / "cache" / "k")
    with pytest.raises(CubecastError, match="relative path"):
        fsm.fetch("../../secret.txt")


@pytest.mark.parametrize("bad", ["../evil", "ABS", "a/../../evil"])
def test_stage_sample_refuses_ids_that_leave_staging(sample, tmp_path, bad):
    from dataclasses import replace

    bad = str(tmp_path / "abs-evil") if bad == "ABS" else bad
    staging = tmp_path / "work" / "staging"
    staging.mkdir(parents=True)
    victim = tmp_path / "work" / "evil"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    manifest = sample.encoded.manifest.model_copy(update={"cube_id": bad})
    enc = EncodedCube(manifest, sample.encoded.store, sample.encoded.source)
    with pytest.raises(CubecastError, match="cube id"):
        stage_sample(replace(sample, encoded=enc), staging)
    assert (victim / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "abs-evil").exists()


def _manifest_dict(folder):
    """The stored manifest (zstd-compressed JSON) as a dict, to craft a hostile one."""
    from pipeline.codec.manifest import Manifest

    return json.loads(Manifest.from_json((folder / MANIFEST_FILE).read_bytes()).to_json())


def test_manifest_stream_names_cannot_leave_the_cube_folder(cube_folder, tmp_path):
    folder = tmp_path / "c"
    shutil.copytree(cube_folder, folder)
    (tmp_path / "outside.txt").write_text("not yours")
    with pytest.raises(CubecastError, match="stream file '../outside.txt'"):
        FolderStore(folder).file_path("../outside.txt")
    m = _manifest_dict(folder)
    m["streams"][0]["file"] = "../outside.txt"
    (folder / MANIFEST_FILE).write_text(json.dumps(m))
    with pytest.raises(CubecastError, match="stream file '../outside.txt'"):
        EncodedCube.from_folder(folder)


def test_crafted_tar_cannot_write_outside_the_folder(cube_folder, tmp_path):
    m = _manifest_dict(cube_folder)
    first = m["streams"][0]["file"]
    m["streams"][0]["file"] = "../evil.mkv"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in [
            (MANIFEST_FILE, json.dumps(m).encode()),
            ("../evil.mkv", (cube_folder / first).read_bytes()),
            *[(p.name, p.read_bytes()) for p in cube_folder.iterdir() if p.name != MANIFEST_FILE],
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "here" / "cube"
    with pytest.raises(CubecastError, match="evil"):
        EncodedCube.from_bytes(buf.getvalue(), source="crafted.tar").to_folder(out)
    assert not (tmp_path / "here" / "evil.mkv").exists()


@pytest.mark.parametrize(
    "where, value, key",
    [
        ("split_file", "../../..", "source.split_file"),
        ("split_file", "/etc/passwd", "source.split_file"),
        ("sample_list", "../ids.txt", "source.cubes.sample_list"),
    ],
)
def test_recipe_files_stay_under_the_source(twin, where, value, key):
    data = load_recipe("dynamicearthnet", location=str(twin)).model_dump()
    if where == "sample_list":
        data["source"]["cubes"] = {"sample_list": value}
    else:
        data["source"][where] = value
    with pytest.raises(RecipeError, match=key):
        parse_recipe(data)


@pytest.mark.parametrize("name", ["../../x", "/abs", "My_Recipe", "a.b"])
def test_recipe_name_is_a_folder_name_and_an_artifact_key(twin, name):
    data = load_recipe("dynamicearthnet", location=str(twin)).model_dump()
    data["name"] = name
    with pytest.raises(RecipeError, match=r"name: .*lower-case"):
        parse_recipe(data)


def test_symlinks_are_not_published(folder, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("private key")
    (folder / "notes.txt").symlink_to(secret)
    target = tmp_path / "t"
    with pytest.raises(CubecastError, match="symbolic link"):
        publish(folder, str(target))
    assert not (target / "notes.txt").exists()
    (folder / "notes.txt").unlink()
    (folder / "extra").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(CubecastError, match="symbolic link"):
        publish(folder, str(target))


# -- 2. the token goes to the configured hub endpoint only ---------------------------------
def test_token_only_for_the_hub_endpoint(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert auth_headers("https://huggingface.co/datasets/o/n/resolve/main/a.tacozip")
    for url in (
        "http://huggingface.co/datasets/o/n/resolve/main/a.tacozip",  # clear text
        "https://evil.example/huggingface/a.tacozip",
        "https://huggingface.co.evil.example/a.tacozip",
        "https://mirror.example/?from=huggingface.co",
    ):
        assert auth_headers(url) == {}, url
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:8123")
    assert auth_headers("http://127.0.0.1:8123/datasets/o/n/resolve/main/a")
    assert auth_headers("http://127.0.0.1:9999/a") == {}
    assert auth_headers("https://huggingface.co/a") == {}


def test_download_sends_no_token_to_a_mirror_named_huggingface(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    (tmp_path / "site" / "huggingface").mkdir(parents=True)
    (tmp_path / "site" / "huggingface" / "f.bin").write_bytes(b"data")
    with RangeServer(tmp_path / "site") as server:
        download(f"{server.url}/huggingface/f.bin", tmp_path / "f.bin", progress=False)
    sent = [h for _, headers in server.requests for h in headers.values()]
    assert server.requests and not any(TOKEN in h for h in sent)


# -- 3. publish mirrors exactly what was verified ------------------------------------------
def test_verification_records_every_published_file(folder):
    files = json.loads((folder / "verification.json").read_text())["files"]
    for rel in ("README.md", "REPORT.md"):
        assert rel in files
    assert any(r.endswith(".tacozip") for r in files) and any(
        r.startswith(".tacocat/") for r in files
    )
    assert any(r.startswith("report/") and r.endswith(".png") for r in files)
    shard = sorted(folder.glob("*.tacozip"))[0]
    assert files[shard.name] == hashlib.sha256(shard.read_bytes()).hexdigest()


def test_publish_refuses_a_shard_deleted_after_verification(folder, tmp_path):
    sorted(folder.glob("*.tacozip"))[-1].unlink()
    with pytest.raises(PublishError, match="deleted since verification"):
        publish(folder, str(tmp_path / "t"))
    assert not (tmp_path / "t").exists()


def test_publish_refuses_tacocat_edited_after_verification(folder, tmp_path):
    edited = sorted((folder / ".tacocat").iterdir())[0]
    edited.write_bytes(edited.read_bytes() + b"\0")
    with pytest.raises(PublishError, match=r"\.tacocat.*changed since verification"):
        publish(folder, str(tmp_path / "t"))


def test_publish_deletes_an_earlier_layout_on_a_folder_target(folder, tmp_path):
    target = tmp_path / "t"
    publish(folder, str(target))
    for rel in ("old-dataset_part0007.tacozip", ".tacocat/old-dataset_part0007.parquet"):
        (target / rel).write_bytes(b"stale")
    again = publish(folder, str(target))
    assert sorted(again.deleted) == [
        ".tacocat/old-dataset_part0007.parquet",
        "old-dataset_part0007.tacozip",
    ]
    assert again.uploaded == []
    assert not (target / "old-dataset_part0007.tacozip").exists()
    assert not (target / ".tacocat" / "old-dataset_part0007.parquet").exists()
    assert sorted(p.name for p in target.glob("*.tacozip")) == sorted(
        p.name for p in folder.glob("*.tacozip")
    )


def test_publish_deletes_an_earlier_layout_on_the_hub(folder, hub):
    target = "hf://datasets/cubecast-test/trust"
    publish(folder, target)
    repo = hub.repos["cubecast-test/trust"]
    repo.files["old-dataset_part0003.tacozip"] = b"stale shard"
    repo.files[".tacocat/old.parquet"] = b"stale index"
    again = publish(folder, target)
    assert again.uploaded == [] and again.commit is not None
    assert "old-dataset_part0003.tacozip" not in repo.files
    assert ".tacocat/old.parquet" not in repo.files
    assert len(repo.commits) == 3  # the hub's first, the publish, the deletions


def test_killed_local_publish_resumes(folder, tmp_path):
    target = tmp_path / "t"
    seen: list[str] = []

    def killed_after_two(rel: str) -> None:
        if len(seen) == 2:
            raise KeyboardInterrupt
        seen.append(rel)

    with pytest.raises(KeyboardInterrupt):
        publish(folder, str(target), progress=killed_after_two)
    resumed = publish(folder, str(target))
    assert not set(seen) & set(resumed.uploaded)
    assert set(seen) <= set(resumed.unchanged)
    # the index lost (killed between a rename and its record): files already there are kept
    (target / ".cubecast-index.json").unlink()
    again = publish(folder, str(target))
    assert again.uploaded == []


# -- 4. one writer per output folder; no mix of settings -----------------------------------
def test_second_pack_into_a_locked_folder_fails_at_once(sample, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".cubecast.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(CubecastError, match=f"{out}.*another cubecast"):
            pack_shards([sample], out, DatasetInfo(id="one"), split_size="1GB")
    assert not list(out.glob("*.tacozip"))


def test_cli_pack_into_a_locked_folder_is_one_line(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    s2_like(t=3, h=16, w=16).to_netcdf(src / "cube0.nc")
    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".cubecast.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        r = cli("pack", str(src), str(out), "--crf", "30")
    assert_one_line_error(r, str(out), "another cubecast")


def test_repack_with_other_settings_replaces_cleanly(sample, tmp_path):
    out = tmp_path / "out"
    pack_shards([sample], out, DatasetInfo(id="first"), split_size="1GB")
    (out / ".pack-killed").mkdir()  # left by a killed run
    (out / ".work" / "staging" / ".cubecast-spool-killed").mkdir(parents=True)
    pack_shards([sample], out, DatasetInfo(id="second"), split_size="1GB")
    assert [p.name for p in out.glob("*.tacozip")] == ["second.tacozip"]
    assert not (out / ".pack-killed").exists()
    assert not (out / ".work" / "staging" / ".cubecast-spool-killed").exists()


# -- 5. values validated at the edge, named -------------------------------------------------
@pytest.fixture(scope="module")
def small_nc(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("nc") / "cube.nc"
    s2_like(t=3, h=16, w=16).to_netcdf(path)
    return path


@pytest.mark.parametrize(
    "args, named",
    [
        (["--keyint", "0"], "--keyint"),
        (["--psnr", "200"], "--lossless"),
        (["--psnr", "-5"], "--psnr"),
        (["--crf", "-1"], "--crf"),
        (["--workers", "0"], "--workers"),
    ],
)
def test_cli_encode_values_are_checked(small_nc, tmp_path, args, named):
    from pipeline.cli import app

    out = tmp_path / "enc"
    r = CliRunner().invoke(app, ["encode", str(small_nc), str(out), "--engine", "pyav", *args])
    assert r.exit_code != 0
    said = r.output + str(r.exception or "")
    assert named in said, said
    assert not out.exists()


@pytest.mark.parametrize(
    "section, value, named",
    [
        ("codec", {"x265_params": "nonsense=1"}, "nonsense"),
        ("codec", {"x265_params": "aq-mode=banana"}, "aq-mode"),
        ("codec", {"psnr": 110.0}, "codec.psnr"),
        ("verify", {"bands": {"B99": 30.0}}, "B99"),
    ],
)
def test_recipe_values_are_checked(twin, section, value, named):
    data = load_recipe("dynamicearthnet", location=str(twin)).model_dump()
    data[section].update(value)
    with pytest.raises(RecipeError, match=named):
        parse_recipe(data)


def test_known_x265_params_are_accepted(twin):
    data = load_recipe("dynamicearthnet", location=str(twin)).model_dump()
    data["codec"]["x265_params"] = "rc-lookahead=10:aq-mode=2:no-sao=1"
    assert parse_recipe(data).codec.x265_params == "rc-lookahead=10:aq-mode=2:no-sao=1"


# -- 6. one-line errors ---------------------------------------------------------------------
def test_ls_on_a_folder_or_a_corrupt_shard_is_one_line(tmp_path):
    assert_one_line_error(cli("ls", str(tmp_path)), "error:")
    bad = tmp_path / "bad.tacozip"
    bad.write_bytes(b"PK\x03\x04" + os.urandom(300))
    assert_one_line_error(cli("ls", str(bad)), "bad.tacozip")


def test_unreachable_hub_is_one_line(folder, monkeypatch, capsys):
    import socket
    import time

    from pipeline.cli import main

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(time, "sleep", lambda s: None)  # huggingface_hub's retry backoff
    monkeypatch.setattr(
        sys, "argv", ["cubecast", "publish", str(folder), "--to", "hf://datasets/o/n"]
    )
    with pytest.raises(SystemExit) as done:
        main()
    err = capsys.readouterr().err
    r = subprocess.CompletedProcess([], done.value.code, "", err)
    assert_one_line_error(r, "cannot reach", f"127.0.0.1:{port}")
    assert TOKEN not in err


def test_garbled_verification_json_is_one_line(folder, tmp_path):
    (folder / "verification.json").write_text('{"passed": true, "checks": [')
    r = cli("publish", str(folder), "--to", str(tmp_path / "t"))
    assert_one_line_error(r, "verification.json")
    (folder / "verification.json").write_text('{"passed": true, "checks": [{"x": 1}]}')
    r = cli("publish", str(folder), "--to", str(tmp_path / "t"))
    assert_one_line_error(r, "verification.json")


def test_non_utf8_recipe_is_one_line(tmp_path):
    recipe = tmp_path / "latin.toml"
    recipe.write_bytes('name = "caf\u00e9"\n'.encode("latin-1"))
    r = cli("pack", str(recipe), str(tmp_path / "out"))
    assert_one_line_error(r, "latin.toml")


def test_invalid_artifact_key_fails_before_encoding(twin, tmp_path):
    text = (Path(__file__).parents[1] / "datasets" / "dynamicearthnet.toml").read_text()
    recipe = tmp_path / "My_Dataset.toml"
    recipe.write_text(text)
    r = cli("pack", str(recipe), str(tmp_path / "out"), "--source", str(twin))
    assert_one_line_error(r, "My_Dataset")
    assert not (tmp_path / "out" / ".work").exists()  # refused before any cube was encoded


def test_verify_records_then_reverify_after_change(folder, twin, tmp_path):
    """The record follows a re-verification: a changed shard publishes once verified again."""
    shard = sorted(folder.glob("*.tacozip"))[0]
    import zipfile

    with zipfile.ZipFile(shard, "a") as z:
        z.comment = b"repacked"
    with pytest.raises(PublishError, match="changed since verification"):
        publish(folder, str(tmp_path / "t"))
    verify_step(_recipe(twin), folder, progress=False)
    assert shard.name in publish(folder, str(tmp_path / "t")).uploaded
