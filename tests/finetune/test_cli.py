"""The command line: argument handling and errors that stop a run before anything is built (in-process)."""

import json
import os

import pytest

from nemo_mft.finetune import cli


def test_hydra_settings_sit_next_to_the_user_overrides():
    args = cli.hydra_argv(["--config-name", "mft_tiny", "a.b=1", "~c", "--cfg", "job"])
    assert args[:4] == ["--config-name", "mft_tiny", "a.b=1", "~c"]
    assert args[4:4 + len(cli.HYDRA_SETTINGS)] == list(cli.HYDRA_SETTINGS)
    assert args[-2:] == ["--cfg", "job"]
    # No override at all: the settings go first, before any option.
    assert cli.hydra_argv(["--info"])[: len(cli.HYDRA_SETTINGS)] == list(cli.HYDRA_SETTINGS)


def test_a_user_setting_replaces_ours_and_relative_config_path_is_from_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = cli.hydra_argv(["--config-path", "my_conf", "--config-name", "x", "hydra.run.dir=elsewhere"])
    assert args[1] == os.path.join(str(tmp_path), "my_conf")
    assert args.count("hydra.run.dir=elsewhere") == 1 and "hydra.run.dir=." not in args
    assert f"--config-path={tmp_path / 'rel'}" in cli.hydra_argv(["--config-path=rel"])


def test_default_config_dir_is_the_checkout_conf_or_the_env(monkeypatch, tmp_path):
    monkeypatch.delenv(cli.CONFIG_DIR_ENV, raising=False)
    assert os.path.isfile(os.path.join(cli.default_config_dir(), "mft_tiny.yaml"))
    monkeypatch.setenv(cli.CONFIG_DIR_ENV, str(tmp_path))
    assert cli.default_config_dir() == str(tmp_path)


def test_console_script_dispatch(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0 and "finetune" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["pretrain"])
    assert exit_info.value.code == 2 and "unknown command 'pretrain'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["finetune", "mft.tau=0.1"])
    assert exit_info.value.code == 2 and "--config-name is required" in capsys.readouterr().err


def _write_data(root, train_lines, valid_lines=('{"input": "q", "output": "a"}',)):
    root.mkdir(exist_ok=True)
    (root / "training.jsonl").write_text("".join(line + "\n" for line in train_lines))
    (root / "validation.jsonl").write_text("".join(line + "\n" for line in valid_lines))
    return root


def _fail(argv, capsys, monkeypatch):
    """Run the CLI in-process; building a process group or a model would be a test failure."""
    import torch.distributed as dist

    def forbidden(*args, **kwargs):
        raise AssertionError("a process group was started before the error was found")

    monkeypatch.setattr(dist, "init_process_group", forbidden)
    with pytest.raises(SystemExit) as exit_info:
        cli.finetune_main(["--config-name", "mft_tiny", "logger.progress_bar=false", *argv])
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("override, message", [
    ("mft.tau=1.5", "mft.tau must be in [0, 1]"),
    ("mft.method=lora", "mft.method must be one of"),
    ("train.global_batch_size=7", "multiple of micro_batch_size"),
    ("tokenizer.type=huggingface", "tokenizer.path is required"),
])
def test_bad_values_stop_before_anything_is_built(tmp_path, capsys, monkeypatch, override, message):
    data = _write_data(tmp_path / "data", ['{"input": "q", "output": "a"}'])
    code, err = _fail([f"dataset.dataset_root={data}", f"logger.log_dir={tmp_path / 'run'}", override],
                      capsys, monkeypatch)
    assert code == 2 and message in err
    assert not (tmp_path / "run").exists()


def test_unknown_key_is_named(tmp_path, capsys, monkeypatch):
    code, err = _fail([f"dataset.dataset_root={tmp_path}", "model.hidden_sizes=3"], capsys, monkeypatch)
    assert code == 2 and "unknown key model.hidden_sizes; did you mean model.hidden_size?" in err


def test_impossible_layout_for_the_world_size(tmp_path, capsys, monkeypatch):
    data = _write_data(tmp_path / "data", ['{"input": "q", "output": "a"}'])
    monkeypatch.setenv("WORLD_SIZE", "3")
    code, err = _fail([f"dataset.dataset_root={data}", "model.tensor_model_parallel_size=2"], capsys, monkeypatch)
    assert code == 2 and "3 processes cannot be split into tensor_model_parallel_size 2" in err


@pytest.mark.parametrize("train_lines, message", [
    (['{"input": "q", "output": "a"}', '{"input": "q", "output": '], "training.jsonl:2:"),
    (['{"input": "q", "answer": "a"}'], "training.jsonl:1:"),
    ([], "training.jsonl: no rows"),
])
def test_data_errors_name_the_file_and_line(tmp_path, capsys, monkeypatch, train_lines, message):
    data = _write_data(tmp_path / "data", train_lines)
    code, err = _fail([f"dataset.dataset_root={data}"], capsys, monkeypatch)
    assert code == 2 and message in err


def test_missing_files_are_named(tmp_path, capsys, monkeypatch):
    data = _write_data(tmp_path / "data", ['{"input": "q", "output": "a"}'])
    os.remove(data / "validation.jsonl")
    code, err = _fail([f"dataset.dataset_root={data}"], capsys, monkeypatch)
    assert code == 2 and "validation set not found" in err
    _write_data(data, ['{"input": "q", "output": "a"}'])
    code, err = _fail([f"dataset.dataset_root={data}", f"evaluation.general_data={tmp_path}/none.jsonl"],
                      capsys, monkeypatch)
    assert code == 2 and "evaluation.general_data not found" in err


def test_another_runs_checkpoints_and_log_dir_are_not_overwritten(tmp_path, capsys, monkeypatch):
    data = _write_data(tmp_path / "data", ['{"input": "q", "output": "a"}'])
    save = tmp_path / "ckpt"
    (save / "iter_0000002").mkdir(parents=True)
    (save / "iter_0000002" / "metadata.json").write_text(json.dumps({"sharded_backend": "torch_dist"}))
    (save / "latest_checkpointed_iteration.txt").write_text("2\n")
    code, err = _fail([f"dataset.dataset_root={data}", f"checkpoint.save={save}"], capsys, monkeypatch)
    assert code == 2 and "already holds checkpoints (iterations [2])" in err
    assert f"checkpoint.load={save}" in err
    log_dir = tmp_path / "run"
    log_dir.mkdir()
    (log_dir / "metrics.jsonl").write_text('{"iteration": 1, "loss": 1.0}\n')
    code, err = _fail([f"dataset.dataset_root={data}", f"logger.log_dir={log_dir}"], capsys, monkeypatch)
    assert code == 2 and "already holds metrics.jsonl" in err
    code, err = _fail([f"dataset.dataset_root={data}", f"checkpoint.pretrained_checkpoint={tmp_path}/none"],
                      capsys, monkeypatch)
    assert code == 2 and "checkpoint.pretrained_checkpoint" in err and "is not a directory" in err
