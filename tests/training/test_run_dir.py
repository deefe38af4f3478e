"""Directory rules of a run (no process group needed): resume detection and the overwrite guards."""

import os

import pytest

from nemo_mft.config.schema import CheckpointSection, DatasetSection, FinetuneConfig, LoggerSection
from nemo_mft.training.checkpointing import holds_checkpoints, resolve_checkpoint, saved_iterations
from nemo_mft.training.base_model import find_base_model
from nemo_mft.training.run_dir import RUN_MARKER, plan_run, write_run_files


def _checkpoint(root, iteration, tracker=True, complete=True):
    path = root / f"iter_{iteration:07d}"
    path.mkdir(parents=True)
    if complete:
        (path / "metadata.json").write_text("{}")
    if tracker:
        (root / "latest_checkpointed_iteration.txt").write_text(f"{iteration}\n")
    return str(path)


def _config(tmp_path, **checkpoint):
    return FinetuneConfig(dataset=DatasetSection(dataset_root=str(tmp_path)),
                          logger=LoggerSection(log_dir=str(tmp_path / "run")),
                          checkpoint=CheckpointSection(**checkpoint))


def test_resolve_checkpoint_follows_the_tracker(tmp_path):
    assert resolve_checkpoint(str(tmp_path / "missing")) is None
    assert resolve_checkpoint(str(tmp_path)) is None and not holds_checkpoints(str(tmp_path))
    _checkpoint(tmp_path, 2)
    latest = _checkpoint(tmp_path, 4)
    assert resolve_checkpoint(str(tmp_path)) == latest
    assert resolve_checkpoint(latest) == latest  # one iteration directory
    assert saved_iterations(str(tmp_path)) == [2, 4]
    _checkpoint(tmp_path, 6, complete=False)  # a save that died before metadata.json
    with pytest.raises(ValueError, match="missing or incomplete"):
        resolve_checkpoint(str(tmp_path))


def test_resume_and_fresh_start_decisions(tmp_path):
    save = tmp_path / "ckpt"
    # save = load, still empty: a fresh start (the auto-resume pattern).
    plan = plan_run(_config(tmp_path, save=str(save), load=str(save)))
    assert plan.resume_from is None
    with pytest.raises(FileNotFoundError, match="checkpoint.load=.* holds no checkpoint"):
        plan_run(_config(tmp_path, save=str(save), load=str(tmp_path / "other")))
    latest = _checkpoint(save, 3)
    assert plan_run(_config(tmp_path, save=str(save), load=str(save))).resume_from == latest
    assert plan_run(_config(tmp_path, save=str(save), load=latest)).resume_from == latest
    # Resuming another run's checkpoint into a new, empty save directory is fine.
    assert plan_run(_config(tmp_path, save=str(tmp_path / "new"), load=str(save))).resume_from == latest
    assert find_base_model(str(save), seq_length=8).path == latest  # a save directory: its latest checkpoint


def test_guards(tmp_path):
    save = tmp_path / "ckpt"
    _checkpoint(save, 3)
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        plan_run(_config(tmp_path, save=str(save)))
    other = tmp_path / "other"
    _checkpoint(other, 1)
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        plan_run(_config(tmp_path, save=str(save), load=str(other)))
    os.makedirs(tmp_path / "run")
    (tmp_path / "run" / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(FileExistsError, match="metrics.jsonl"):
        plan_run(_config(tmp_path))
    assert plan_run(_config(tmp_path, save=str(save), load=str(save))).resume_from  # resuming may append


def test_run_marker_records_resumes(tmp_path):
    import json

    save = tmp_path / "ckpt"
    config = _config(tmp_path, save=str(save))
    write_run_files(config, plan_run(config), "a: 1\n")
    assert (tmp_path / "run" / "config.yaml").read_text() == "a: 1\n"
    marker = json.loads((save / RUN_MARKER).read_text())
    latest = _checkpoint(save, 2)
    resumed = _config(tmp_path, save=str(save), load=str(save))
    os.remove(tmp_path / "run" / "config.yaml")
    write_run_files(resumed, plan_run(resumed), "a: 1\n")
    again = json.loads((save / RUN_MARKER).read_text())
    assert again["run_id"] == marker["run_id"] and again["resumes"][0]["from"] == latest
