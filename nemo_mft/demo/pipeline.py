"""The demo's steps, reusable by ``benchmarks/paper_repro.py``: data, tokenizer, base model, finetuning runs.

Every training run goes through the project's entry point, ``python -m nemo_mft.finetune``, started as a
subprocess whose output streams to this terminal. Layout of the cache directory (default
``demo_out/cache``)::

    corpora/                  general/ and domain/ {training,validation,test}.jsonl + manifest.json
    tokenizer-<key>/          tokenizer.json (byte-level BPE trained on the two training splits)
    pretrain-data-<key>/      training.jsonl (general text packed into seq_length-token rows),
                              validation.jsonl (general validation documents)
    finetune-data/            training.jsonl (domain training passages), validation.jsonl (domain TEST
                              passages: the held-out set every tuned model is scored on)
    base-<key>/               checkpoint/, run/ (the pretraining run's logs) and done.json

``<key>`` is a hash of everything that decides the artefact (profile, recipe text, input hashes), so a
changed setting rebuilds it and an unchanged one is reused: the base model is pretrained once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from nemo_mft.demo.corpora import prepare_corpora

__all__ = ["Profile", "PROFILES", "DataPaths", "prepare_data", "ensure_base_model", "run_entry_point",
           "finetune", "REPO_CONF", "RunFailed"]

def _recipes_dir() -> Path:
    """The recipes `nemo-mft finetune` finds by default (a checkout's conf/, or the installed package's)."""
    from nemo_mft.finetune.cli import default_config_dir

    found = default_config_dir()
    if found is None:
        raise FileNotFoundError("no recipe directory found (neither a checkout's conf/ nor nemo_mft.conf)")
    return Path(found)


REPO_CONF = _recipes_dir()
CORPORA_FORMAT = 1


class RunFailed(RuntimeError):
    """The entry point exited with a non-zero status."""


@dataclass(frozen=True)
class Profile:
    """Sizes of one demo variant. ``*_overrides`` are Hydra overrides added to the recipes."""

    name: str
    vocab_size: int
    seq_length: int
    samples: int
    pretrain_overrides: tuple[str, ...] = ()
    finetune_overrides: tuple[str, ...] = ()
    max_pretrain_rows: Optional[int] = None  # cap on packed pretraining rows (smoke)


_SMOKE_MODEL = ("model.num_layers=2", "model.hidden_size=64", "model.num_attention_heads=4",
                "model.ffn_hidden_size=256")
PROFILES = {
    # The recipes' own sizes: 4 x 256 GPT, seq 128, 4k BPE, 500 domain samples.
    "full": Profile(name="full", vocab_size=4096, seq_length=128, samples=500),
    # CI: a tiny model, a few iterations; checks the pipeline, not the numbers.
    "smoke": Profile(
        name="smoke", vocab_size=512, seq_length=64, samples=64, max_pretrain_rows=400,
        pretrain_overrides=_SMOKE_MODEL + ("train.train_iters=12", "train.global_batch_size=8",
                                           "train.micro_batch_size=4", "scheduler.lr_warmup_iters=2",
                                           "evaluation.eval_interval=6", "evaluation.max_eval_windows=4",
                                           "logger.log_interval=4"),
        finetune_overrides=_SMOKE_MODEL + ("train.train_iters=6", "train.global_batch_size=8",
                                           "train.micro_batch_size=4", "scheduler.lr_warmup_iters=1",
                                           "evaluation.eval_interval=3", "evaluation.max_eval_windows=4",
                                           "logger.log_interval=2"),
    ),
}


@dataclass
class DataPaths:
    corpora: Path
    tokenizer: Path  # the tokenizer.json file
    pretrain_root: Path
    finetune_root: Path
    general_validation: Path
    general_test: Path
    manifest: dict = field(default_factory=dict)


def _hash(*parts: object) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:12]


def _file_sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _log(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def _write_rows(path: Path, texts: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for text in texts:
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _read_texts(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def pack_stream(texts: Sequence[str], tokenizer_file: Path, tokens_per_row: int, eos_text: str = "</s>") -> list[str]:
    """Concatenate ``texts`` (separated by the eos token's text) and cut the stream into rows of
    ``tokens_per_row`` tokens, at token boundaries of the original string (no decode round trip).

    The last partial row is dropped. Rows are plain text; the eos spelling inside them is parsed back
    into the eos token by the tokenizer, so the model sees document boundaries as in evaluation.
    """
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_file))
    stream = eos_text.join(texts) + eos_text
    offsets = tok.encode(stream, add_special_tokens=False).offsets
    rows = []
    for start in range(0, len(offsets) - tokens_per_row + 1, tokens_per_row):
        first, last = offsets[start], offsets[start + tokens_per_row - 1]
        rows.append(stream[first[0]:last[1]])
    return rows


def prepare_data(cache: Path, profile: Profile, *, corpora_dir: Optional[Path] = None) -> DataPaths:
    """Corpora, tokenizer and the two dataset roots (each step reused when its inputs are unchanged).

    ``corpora_dir``: an existing directory laid out like :func:`prepare_corpora`'s output (tests);
    by default the real corpora are (re)built in ``cache/corpora`` from the Debian packages.
    """
    from nemo_mft.data import train_bpe_tokenizer

    cache = Path(cache)
    t0 = time.time()
    if corpora_dir is None:
        corpora_dir = cache / "corpora"
        manifest_path = corpora_dir / "manifest.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
        if manifest is None or manifest.get("format") != CORPORA_FORMAT:
            _log(f"building the corpora in {corpora_dir} (Debian fortunes + King James Bible)")
            manifest = prepare_corpora(corpora_dir)
    else:
        corpora_dir = Path(corpora_dir)
        manifest_path = corpora_dir / "manifest.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    general_train = corpora_dir / "general" / "training.jsonl"
    domain_train = corpora_dir / "domain" / "training.jsonl"
    inputs = {name: _file_sha(corpora_dir / name) for name in
              ("general/training.jsonl", "general/validation.jsonl", "general/test.jsonl",
               "domain/training.jsonl", "domain/test.jsonl")}

    tok_dir = cache / f"tokenizer-{_hash('bpe', profile.vocab_size, inputs['general/training.jsonl'], inputs['domain/training.jsonl'])}"
    tok_file = tok_dir / "tokenizer.json"
    if not tok_file.is_file():
        _log(f"training a {profile.vocab_size}-token byte-level BPE on the general + domain training splits")
        # Plain-text copies, so the jsonl quoting does not leak into the merges.
        tok_dir.mkdir(parents=True, exist_ok=True)
        plain = []
        for src in (general_train, domain_train):
            dst = tok_dir / (src.parent.name + ".txt")
            dst.write_text("\n\n".join(_read_texts(src)) + "\n", encoding="utf-8")
            plain.append(dst)
        train_bpe_tokenizer(plain, profile.vocab_size, str(tok_file) + ".tmp")
        os.replace(str(tok_file) + ".tmp", tok_file)
        for p in plain:
            p.unlink()

    pre_root = cache / f"pretrain-data-{_hash('pack', profile.seq_length, profile.max_pretrain_rows, _file_sha(tok_file), inputs['general/training.jsonl'], inputs['general/validation.jsonl'])}"
    if not (pre_root / "validation.jsonl").is_file():
        _log(f"packing the general training split into {profile.seq_length}-token rows")
        rows = pack_stream(_read_texts(general_train), tok_file, profile.seq_length)
        if profile.max_pretrain_rows is not None:
            rows = rows[: profile.max_pretrain_rows]
        _write_rows(pre_root / "training.jsonl", rows)
        shutil.copyfile(corpora_dir / "general" / "validation.jsonl", pre_root / "validation.jsonl.tmp")
        os.replace(pre_root / "validation.jsonl.tmp", pre_root / "validation.jsonl")

    ft_root = cache / "finetune-data"
    ft_root.mkdir(parents=True, exist_ok=True)
    for src, dst in ((domain_train, "training.jsonl"), (corpora_dir / "domain" / "test.jsonl", "validation.jsonl")):
        target = ft_root / dst
        if not target.is_file() or _file_sha(target) != _file_sha(src):
            shutil.copyfile(src, str(target) + ".tmp")
            os.replace(str(target) + ".tmp", target)
    _log(f"data ready in {time.time() - t0:.1f} s")
    return DataPaths(corpora=corpora_dir, tokenizer=tok_file, pretrain_root=pre_root, finetune_root=ft_root,
                     general_validation=corpora_dir / "general" / "validation.jsonl",
                     general_test=corpora_dir / "general" / "test.jsonl", manifest=manifest)


def run_entry_point(recipe: str, overrides: Sequence[str], *, config_dir: Path = REPO_CONF,
                    env: Optional[dict] = None, output: Optional[Path] = None) -> float:
    """``python -m nemo_mft.finetune --config-name RECIPE OVERRIDES``; returns seconds.

    The run's output streams to this terminal, or into the file ``output`` (for runs side by side).
    ``env`` defaults to this process's environment (set ``OMP_NUM_THREADS`` there to pin torch's threads).
    """
    cmd = [sys.executable, "-m", "nemo_mft.finetune", "--config-path", str(config_dir), "--config-name", recipe,
           *overrides]
    _log("$ " + " ".join(cmd) + (f"  > {output}" if output else ""))
    t0 = time.time()
    if output is None:
        proc = subprocess.run(cmd, env=env, check=False)
    else:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        with open(output, "w") as sink:
            proc = subprocess.run(cmd, env=env, check=False, stdout=sink, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        where = f"output in {output}" if output else "command above"
        raise RunFailed(f"{recipe} run failed with exit status {proc.returncode} ({where})")
    return time.time() - t0


def _data_overrides(paths: DataPaths) -> list[str]:
    return ["tokenizer.type=huggingface", f"tokenizer.path={paths.tokenizer}"]


def ensure_base_model(cache: Path, paths: DataPaths, profile: Profile, *, force: bool = False,
                      extra_overrides: Sequence[str] = (), config_dir: Path = REPO_CONF) -> dict:
    """The pretrained base model, trained once per configuration (see the module docstring).

    Returns ``done.json``'s content: ``{"checkpoint", "run_dir", "key", "train_time_s", "reused"}``.
    """
    recipe_text = (Path(config_dir) / "demo_pretrain.yaml").read_text()
    overrides = list(profile.pretrain_overrides) + list(extra_overrides)
    key = _hash("base", recipe_text, overrides, profile.seq_length, _file_sha(paths.tokenizer),
                _file_sha(paths.pretrain_root / "training.jsonl"), _file_sha(paths.general_validation))
    base_dir = Path(cache) / f"base-{key}"
    done = base_dir / "done.json"
    if done.is_file() and not force:
        info = json.loads(done.read_text())
        _log(f"reusing the pretrained base model {info['checkpoint']} (config hash {key}; --force-pretrain retrains)")
        return {**info, "reused": True}
    if base_dir.exists():
        shutil.rmtree(base_dir)
    _log(f"pretraining the base model on general text (config hash {key}); this is done once")
    seconds = run_entry_point("demo_pretrain", [
        f"dataset.dataset_root={paths.pretrain_root}", f"dataset.seq_length={profile.seq_length}",
        *_data_overrides(paths), f"checkpoint.save={base_dir / 'checkpoint'}",
        f"logger.log_dir={base_dir / 'run'}", f"evaluation.general_data={paths.general_validation}",
        *overrides], config_dir=config_dir)
    info = {"checkpoint": str(base_dir / "checkpoint"), "run_dir": str(base_dir / "run"), "key": key,
            "train_time_s": seconds}
    done.write_text(json.dumps(info, indent=2) + "\n")
    return {**info, "reused": False}


def finetune(method: str, log_dir: Path, paths: DataPaths, base: dict, profile: Profile, *,
             extra_overrides: Sequence[str] = (), config_dir: Path = REPO_CONF, quiet: bool = False) -> dict:
    """One finetuning run of ``method`` from the base model; returns its ``summary.json`` plus
    ``wall_s`` and ``log_dir``. ``log_dir`` (the demo's own output) is emptied first. ``quiet``: the
    run's output goes to ``log_dir/../<name>.log`` instead of the terminal."""
    log_dir = Path(log_dir)
    if log_dir.exists():
        shutil.rmtree(log_dir)
    seconds = run_entry_point("demo_finetune", [
        f"mft.method={method}", f"dataset.dataset_root={paths.finetune_root}",
        f"dataset.seq_length={profile.seq_length}", f"dataset.max_samples={profile.samples}",
        *_data_overrides(paths), f"checkpoint.pretrained_checkpoint={base['checkpoint']}",
        f"logger.log_dir={log_dir}", f"evaluation.general_data={paths.general_test}",
        *profile.finetune_overrides, *extra_overrides], config_dir=config_dir,
        output=log_dir.with_name(log_dir.name + ".log") if quiet else None)
    summary = json.loads((log_dir / "summary.json").read_text())
    return {**summary, "wall_s": seconds, "log_dir": str(log_dir)}


def profile_dict(profile: Profile) -> dict:
    return asdict(profile)
