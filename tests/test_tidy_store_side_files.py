"""Browsing a feature store leaves no `<store>-wal` / `<store>-shm` beside it once the process is done
(a user copying or committing the store sees only the store), while a writer still open keeps them."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from features import FeatureStore, LabelProvenance, build_feature_store
from helpers.feature_fixtures import WordTokenizer, make_sae, random_source, single_thread, small_config
from helpers.real_cli import saesteer

one_thread = pytest.fixture(autouse=True, scope="module")(single_thread)
ROOT = Path(__file__).resolve().parents[1]
PROVENANCE = LabelProvenance(judge_model="gpt-test", judge_kind="openai", prompt_version="v1", examples_used=[1, 2],
                             params={"temperature": 0})


def side_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name and not p.name.endswith(".lock"))


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "s.db"
    build_feature_store(path, make_sae("topk", d_in=8, d_sae=16, seed=3), random_source(seed=3, n_contexts=16,
                        context_length=10), small_config(), tokenizer=WordTokenizer(), progress=False)
    assert side_files(path) == []
    return path


def test_a_read_only_open_and_close_leaves_no_side_files(store_path):
    with FeatureStore.open(store_path) as store:
        assert store.feature(1).latent == 1
    assert side_files(store_path) == []


def test_features_show_leaves_no_side_files(store_path):
    r = saesteer("features", "show", str(store_path), "2").ok()
    assert "2" in r.out
    assert side_files(store_path) == []


def test_a_store_left_open_is_cleaned_up_when_the_process_exits(store_path):
    """`serve` keeps its stores open until the process ends."""
    code = ("import sys; from features import FeatureStore; s = FeatureStore.open(sys.argv[1]); s.feature(0); "
            "sys.modules['kept'] = s")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", code, str(store_path)], check=True, env=env, timeout=120)
    assert side_files(store_path) == []


def test_a_reader_closing_keeps_the_files_a_writer_still_uses(store_path):
    writer = FeatureStore.open(store_path, readonly=False)
    try:
        writer.write_label(3, "café 見出し, written while a reader browses", provenance=PROVENANCE)
        with FeatureStore.open(store_path) as reader:
            assert reader.feature(3).label.text == "café 見出し, written while a reader browses"
        assert (store_path.parent / (store_path.name + "-wal")).exists()  # the writer's commit may live there
        with FeatureStore.open(store_path) as reader:
            assert reader.feature(3).label.text == "café 見出し, written while a reader browses"
    finally:
        writer.close()
    assert side_files(store_path) == []
    with FeatureStore.open(store_path) as reader:
        assert reader.feature(3).label.text == "café 見出し, written while a reader browses"


@pytest.mark.slow
def test_saesteer_demo_leaves_no_side_files(tmp_path):
    """The whole demo in its own process (`saesteer demo --no-serve`): its work folder holds no `-wal`
    or `-shm` file once it has exited (it used to leave an empty pair beside features.db)."""
    from helpers.demo_small import small_flags

    out = tmp_path / "demo"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-m", "saesteer", "demo", "--no-serve", "--no-progress", "--out", str(out),
                    *small_flags()], check=True, env=env, timeout=600, capture_output=True)
    stores = list(out.rglob("*.db"))
    assert stores, sorted(p.name for p in out.rglob("*"))
    assert [p for p in out.rglob("*") if p.name.endswith(("-wal", "-shm"))] == []


def test_a_reader_closing_beside_a_writer_of_another_process_leaves_its_files(store_path):
    """A `label` writing in another process: a reader's close must not take the WAL the writer holds."""
    code = ("import sys; from features import FeatureStore, LabelProvenance; "
            "s = FeatureStore.open(sys.argv[1], readonly=False); "
            "s.write_label(5, 'Größe 大小, another process', provenance=LabelProvenance(judge_model='m', "
            "judge_kind='openai', prompt_version='v1', examples_used=[1], params={})); "
            "print('ready', flush=True); sys.stdin.readline(); s.write_label(6, 'after the reader', "
            "provenance=LabelProvenance(judge_model='m', judge_kind='openai', prompt_version='v1', examples_used=[1], "
            "params={})); s.close()")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    writer = subprocess.Popen([sys.executable, "-c", code, str(store_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert writer.stdout.readline().strip() == "ready"
        with FeatureStore.open(store_path) as reader:
            assert reader.feature(5).label.text == "Größe 大小, another process"
        assert (store_path.parent / (store_path.name + "-wal")).exists()
        writer.stdin.write("go\n")
        writer.stdin.flush()
        assert writer.wait(timeout=120) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
    assert side_files(store_path) == []
    with FeatureStore.open(store_path) as reader:
        assert reader.feature(5).label.text == "Größe 大小, another process"
        assert reader.feature(6).label.text == "after the reader"
    assert side_files(store_path) == []
