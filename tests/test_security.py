"""No code runs from a results folder or the cache: checkpoints load tensors and plain data only,
and a rendered lm-eval task folder that was edited is rendered again."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from castlab import checkpoint
from castlab.cli import main
from castlab.config import save_yaml
from castlab.downstream import zeroshot
from castlab.train import run_training
from tests.conftest import tiny_config


class _Payload:
    """Unpickling this calls open(marker, 'w'): the file appears iff the payload ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoint_with_a_pickle_payload_is_refused_without_running(tmp_path, capsys):
    cfg = tiny_config(method="dense", tokens=6 * 8 * 64, checkpoint_every=2)
    run_dir = tmp_path / "run"
    save_yaml(cfg, tmp_path / "config.yaml")
    marker = tmp_path / "payload_ran"
    (run_dir / "checkpoint").mkdir(parents=True)
    torch.save({"model": _Payload(marker), "step": 3}, run_dir / "checkpoint" / "state.pt")
    assert not marker.exists()  # saving does not run it; loading unsafely would

    code = main(["train", "--config", str(tmp_path / "config.yaml"), "--out", str(run_dir),
                 "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert not marker.exists()
    assert len(err) == 1, err
    assert "state.pt: refused to load a checkpoint" in err[0] and "Traceback" not in err[0]
    assert "it references io.open" in err[0]  # named from the pickle opcodes, not by running them
    # nothing of the user's is lost: the checkpoint stays for inspection, no row was written
    assert (run_dir / "checkpoint" / "state.pt").is_file()
    assert not (run_dir / "result.parquet").exists()
    assert not (run_dir / "running.json").exists()


def test_garbage_checkpoint_is_a_one_line_error(tmp_path):
    path = tmp_path / "state.pt"
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(Exception) as info:
        checkpoint.load(path)
    assert type(info.value).__name__ == "UserError"
    assert "state.pt: unreadable checkpoint" in str(info.value)
    torch.save([1, 2], path)
    with pytest.raises(Exception, match="not a castlab checkpoint"):
        checkpoint.load(path)


def test_cast_resume_is_bit_exact_from_a_weights_only_checkpoint(tiny_teacher, tmp_path):
    """A CAST checkpoint (AdamS masks, mask life, RNG states) loads with weights_only=True."""
    cfg = tiny_config(method="cast", init=str(tiny_teacher / "model"), tokens=12 * 8 * 64,
                      lr=1e-3, checkpoint_every=5, eval_every=4, t1=3)
    straight = run_training(cfg, tmp_path / "straight", progress=False)
    assert run_training(cfg, tmp_path / "resumed", progress=False, stop_after=5) is None
    state = torch.load(tmp_path / "resumed" / "checkpoint" / "state.pt", weights_only=True)
    assert state["step"] == 5 and isinstance(state["rng"]["numpy"], torch.Tensor)
    resumed = run_training(cfg, tmp_path / "resumed", progress=False)
    assert resumed["status"] == straight["status"] == "ok"
    assert resumed["eval_loss"] == straight["eval_loss"]
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "straight" / "curve.parquet"),
                                  pd.read_parquet(tmp_path / "resumed" / "curve.parquet"))


def test_edited_task_folder_is_rendered_again(tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("CASTLAB_CACHE", str(tmp_path / "cache"))
    bench = tmp_path / "bench"  # rendering only joins paths under it
    out = zeroshot.render_tasks(bench)
    original = {f.name: f.read_text() for f in out.iterdir()}
    assert "castlab_piqa.yaml" in original
    (out / "castlab_piqa.yaml").write_text("task: castlab_piqa\nprocess_docs: !function evil.run\n")
    (out / "evil.py").write_text("open('/tmp/pwned', 'w')\n")

    again = zeroshot.render_tasks(bench)
    assert again == out
    assert {f.name: f.read_text() for f in again.iterdir()} == original
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no stale or temp folder left
    assert zeroshot.render_tasks(bench) == out  # an intact folder is reused


def _tar_with(path, extra):
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        data = b"ok"
        info = tarfile.TarInfo("corpus/a.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        tar.addfile(extra)
    return path


@pytest.mark.parametrize("with_data_filter", [True, False])
@pytest.mark.parametrize("kind", ["symlink", "dotdot", "absolute"])
def test_pack_extraction_refuses_links_and_escapes_on_every_python(tmp_path, monkeypatch,
                                                                  kind, with_data_filter):
    import tarfile

    from castlab.paths import extract_members

    if not with_data_filter:  # a Python before 3.10.12 / 3.11.4 has no "data" filter
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    bad = tarfile.TarInfo({"symlink": "corpus/link", "dotdot": "corpus/../../evil.txt",
                           "absolute": "/tmp/evil.txt"}[kind])
    if kind == "symlink":
        bad.type, bad.linkname = tarfile.SYMTYPE, "/etc/passwd"
    archive = _tar_with(tmp_path / "p.tar", bad)
    dest = tmp_path / "dest"
    with tarfile.open(archive) as tar, pytest.raises(tarfile.TarError, match="unsafe member"):
        extract_members(tar, dest, tar.getmembers())
    assert not dest.exists() and not (tmp_path / "evil.txt").exists()
    with tarfile.open(archive) as tar:  # the safe member alone extracts
        extract_members(tar, dest, tar.getmembers()[:1])
    assert (dest / "corpus" / "a.txt").read_bytes() == b"ok"


def test_pack_size_flags_a_pack_over_the_one_copy_limit(tmp_path):
    from castlab.paths import MAX_PACK_BYTES, pack_size

    small, big = tmp_path / "small.tar.xz", tmp_path / "big.tar.xz"
    small.write_bytes(b"x" * (3 * 2**20 // 2))
    with open(big, "wb") as handle:  # sparse: one byte past the limit
        handle.truncate(MAX_PACK_BYTES + 1)
    assert pack_size(small) == "1.5 MiB"
    assert pack_size(big) == "50.0 MiB  (over the 50 MiB meant for one copy)"
