"""The benchmark suite that chooses tfdnc's defaults: several data sets, tfdnc against its peer, 3 seeds.

For every data set x loss x setting x seed it trains one run through
bench_peer.py's runner (its own subprocess; the same data, small CNN, P x M
batches, Adam and budget for both sides; see docs/bench/peer.md):

    pml                 the pytorch-metric-learning peer (the loss with its usual miner)
    k1                  tfdnc, K = 1
    k1-symm             tfdnc, K = 1 + Symmetrical Synthesis
    dnc-learnable       tfdnc, D&C K 1 -> k_final, learnable masks
    dnc-fixed           tfdnc, D&C, fixed blocks of d / K dimensions (CVPR)
    dnc-learnable-symm  tfdnc, D&C learnable + Symm (TrainConfig's default recipe)

The test set is evaluated after every epoch (`eval_every=1`, the peer alike),
so the table gives the final metrics, the mean of the last three epochs and
the final epoch's distance to the best one. Defaults are chosen by the
suite's average across data sets, never by one data set.

Every finished run is appended to a JSON-lines file (`--results`), keyed by
its full settings; rerunning the same command skips the runs done, so the
table may grow run by run and an interrupted suite continues where it stopped. Several suite
processes may share one results file (e.g. one per data set): each skips what another finished.

    # the default loss, every data set and setting, 3 seeds (about an hour of 2 idle cores)
    .bench-venv/bin/python bench/suite.py run
    # on a bigger machine: 8 runs at once with 2 threads each
    .bench-venv/bin/python bench/suite.py run --jobs 8 --threads 2 --losses multi_similarity margin
    # an extra TrainConfig field for every run (rows of its own in the table)
    .bench-venv/bin/python bench/suite.py run --settings k1 dnc-learnable-symm --set lr_schedule=cosine
    # the markdown table -> docs/bench/suite.md
    python bench/suite.py table
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)

import bench_peer  # noqa: E402  (bench/ is not a package)

DATASETS = ("shapes", "glyphs", "textures", "patches")
SETTINGS = ("pml", "k1", "k1-symm", "dnc-learnable", "dnc-fixed", "dnc-learnable-symm")
LOSSES = ("multi_similarity", "margin")
SEEDS = (0, 1, 2)
# What the suite fixes on top of bench_peer's BENCH_DEFAULTS (no augmentation): the test set after
# every epoch, for the last-3 mean and the final-vs-best gap. The rest is TrainConfig's defaults:
# 10 epochs of ceil(train images / 32) steps, P x M = 4 x 8, d = 64, Adam 1e-3, K 1 -> 4.
SUITE_DEFAULTS = {"eval_every": 1}
# The papers' regime (issue 20 item 3): a backbone pretrained on a disjoint data set, fine-tuned slowly
# with the masks 100x faster (TPAMI README: --mask-lr-mult=100) and most steps at the final K: the
# fields of tfdnc's "papers-emulated" preset where this tfdnc has it (else the ratio alone). The
# pretrained backbone is the user's: --set backbone_weights=PATH, where "{dataset}" in PATH is replaced
# by each target data set's name (one backbone pretrained per target, on data disjoint from it).
REGIMES: dict[str, dict] = {
    "scratch": {},
    "papers": {"learning_rate": 1e-5, "mask_lr_mult": 100.0},
}
PAPERS_PRESET = "papers-emulated"


def regime_settings(regime: str) -> dict:
    """The TrainConfig fields a regime sets (the preset's, without its data set, run directory and epochs)."""
    if regime == "papers":
        try:
            from tfdnc.presets import PRESETS
        except ImportError:
            PRESETS = {}
        preset = PRESETS.get(PAPERS_PRESET)
        if preset is not None:
            values = dict(preset.config)
            if values:
                return {k: v for k, v in values.items() if k not in ("dataset", "run_dir", "epochs", "data_dir")}
    return dict(REGIMES[regime])
RESULTS = os.path.join(BENCH, "results", "suite.jsonl")
TABLE = os.path.join(ROOT, "docs", "bench", "suite.md")
SIDE_NAMES = {
    "pml": "peer (pytorch-metric-learning)", "k1": "K = 1", "k1-symm": "K = 1 + Symm",
    "dnc-learnable": "D&C learnable", "dnc-fixed": "D&C fixed", "dnc-learnable-symm": "D&C learnable + Symm",
}


# --- jobs ------------------------------------------------------------------------


def run_key(regime: str, config: str, settings: dict) -> str:
    """The key of a run: a hash of everything that defines it (regime, side / configuration, all settings)."""
    text = json.dumps({"regime": regime, "config": config, "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def plan(args, overrides: dict) -> list[dict]:
    """The jobs of the command, seed-major with the sides interleaved (load drift hits all alike)."""
    regime = {**regime_settings(args.regime), **overrides}
    jobs = []
    for seed in args.seeds:
        for loss in args.losses:
            for dataset in args.datasets:
                per_set = dict(regime)
                if isinstance(per_set.get("backbone_weights"), str):
                    per_set["backbone_weights"] = per_set["backbone_weights"].replace("{dataset}", dataset)
                for config in args.settings:
                    settings = bench_peer.resolve_settings(dataset, loss, config, seed, args.epochs,
                                                           {**SUITE_DEFAULTS, **per_set})
                    key = run_key(args.regime, config, settings)
                    jobs.append({"key": f"{args.regime}/{dataset}/{loss}/{config}/{seed}-{key}", "id": key,
                                 "config": config, "settings": settings, "threads": args.threads,
                                 "run_root": args.run_root, "keep_runs": False,
                                 "meta": {"regime": args.regime, "dataset": dataset, "loss": loss, "config": config,
                                          "seed": seed, "overrides": overrides, "epochs_arg": args.epochs}})
    return jobs


def read_results(path: str) -> list[dict]:
    """The records of a results file (a torn last line from a killed writer is skipped)."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                print(f"[suite] {path}:{number}: not a JSON record, skipped", file=sys.stderr)
    return records


def record_of(job: dict, result: dict) -> dict:
    """What the results file keeps of a run: its settings, summary and per-epoch records (no bulky parts)."""
    return {
        "id": job["id"], **job["meta"], "settings": job["settings"], "threads": job["threads"],
        "cpu_count": os.cpu_count(), "time": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "full_settings": {k: v for k, v in (result.get("settings") or {}).items() if k != "run_dir"},
        "summary": result["summary"], "epoch_results": result.get("epoch_results") or [],
        "epoch_loop_seconds": result.get("epoch_loop_seconds") or [],
        "epoch_loop_cpu_seconds": result.get("epoch_loop_cpu_seconds") or [],
        "masks_final": result.get("masks_final"),
        "loadavg_1min": [result.get("loadavg_1min_before"), result.get("loadavg_1min_after")],
    }


def run(args) -> int:
    overrides = bench_peer.parse_set(args.overrides)
    from tfdnc.config import TrainConfig
    import dataclasses

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted((set(overrides) | set(regime_settings(args.regime))) - fields)
    if unknown:
        raise SystemExit(f"--set / --regime {args.regime}: {unknown} are not fields of this tfdnc's TrainConfig")
    fixed = sorted(set(overrides) & {"dataset", "loss", "seed", "run_dir"})
    if fixed:
        raise SystemExit(f"--set: {fixed} come from --datasets / --losses / --seeds, not --set")
    if args.regime == "papers" and not overrides.get("backbone_weights"):
        # the backbones `suite.py pretrain` makes, as if given
        # --set backbone_weights=runs/suite-backbones/{dataset}/model.keras
        overrides["backbone_weights"] = BACKBONE_PATTERN
    if args.regime == "papers":
        pattern = str(overrides["backbone_weights"])
        absent = [d for d in args.datasets if not os.path.exists(pattern.replace("{dataset}", d))]
        if absent:
            raise SystemExit(f"--set backbone_weights={pattern}: no file for {absent}; make the backbones first with "
                             f"`bench/suite.py pretrain --datasets {' '.join(absent)}` (it writes {BACKBONE_PATTERN})")
    from tfdnc.datasets import DATASETS as KNOWN

    missing = [d for d in args.datasets if d not in KNOWN]
    if missing:
        raise SystemExit(f"--datasets: unknown {missing}; this tfdnc has {sorted(KNOWN)}")
    done = {r["id"] for r in read_results(args.results)}
    jobs = [j for j in plan(args, overrides) if j["id"] not in done]
    skipped = len(plan(args, overrides)) - len(jobs)
    if any(j["config"] in bench_peer.PEER_CONFIGS for j in jobs):
        try:
            import pytorch_metric_learning  # noqa: F401
            import torch  # noqa: F401
        except ImportError:
            raise SystemExit(f"the peer runs (pml) need torch and pytorch-metric-learning, which {sys.executable} "
                             "lacks: run with .bench-venv/bin/python (docs/bench/peer.md) or leave pml out of "
                             "--settings")
    print(f"[suite] {len(jobs)} run(s) to do, {skipped} already in {args.results}; {args.jobs} at once x "
          f"{args.threads} thread(s)", file=sys.stderr, flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
    log_dir = os.path.join(args.run_root, "logs")
    os.makedirs(log_dir, exist_ok=True)
    lock, failed, start = threading.Lock(), [], time.perf_counter()

    def one(index_job):
        index, job = index_job
        t0 = time.perf_counter()
        with lock:
            if job["id"] in {r["id"] for r in read_results(args.results)}:
                # another suite process sharing the results file did it meanwhile
                print(f"[suite {index + 1}/{len(jobs)}] {job['key'].rsplit('-', 1)[0]}: done by another process",
                      file=sys.stderr, flush=True)
                return
        result = bench_peer.run_job(job, log_dir)
        with lock:  # one writer appends whole lines
            if "error" in result:
                failed.append(job["key"])
                note = f"FAILED ({result['error']}; log {result['log']})"
            else:
                result["summary"] = bench_peer.summarise_run(result)
                with open(args.results, "a") as f:
                    f.write(json.dumps(record_of(job, result), default=float) + "\n")
                s = result["summary"]
                note = (f"R@1 {100 * s.get('recall@1', float('nan')):.2f}  MAP@R {100 * s.get('map@r', float('nan')):.2f}"
                        f"  last-3 MAP@R {100 * s.get('last3_map@r', float('nan')):.2f}"
                        f"  s/step {s.get('steady_step_s', float('nan')):.4f}")
            print(f"[suite {index + 1}/{len(jobs)}] {job['key'].rsplit('-', 1)[0]}: {note}  "
                  f"({time.perf_counter() - t0:.0f} s; {time.perf_counter() - start:.0f} s in all)",
                  file=sys.stderr, flush=True)

    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(one, enumerate(jobs)))
    if failed:
        print(f"[suite] {len(failed)} run(s) failed (logs in {log_dir}): {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


# --- the papers' regime: backbones pretrained on data disjoint from each target ----------------------

BACKBONES = os.path.join(ROOT, "runs", "suite-backbones")  # runs/ is git-ignored: no weights in git
BACKBONE_PATTERN = os.path.join("runs", "suite-backbones", "{dataset}", "model.keras")
BACKBONE_RESULTS = os.path.join(BENCH, "results", "suite_backbones.jsonl")
# Label offset of each source data set in the pooled source (class ids stay distinct across sets).
SOURCE_LABEL_OFFSET = 100_000


def sources_of(target: str, datasets=DATASETS) -> list[str]:
    """The source data sets of `target`'s backbone: every other suite data set (leave one out)."""
    return [d for d in datasets if d != target]


def source_splits(target: str, datasets=DATASETS):
    """The pooled source of `target`: the other data sets' train splits train, their test splits test.

    No image and no class of the target's data set is in it (as ImageNet for
    CUB: other pictures, other classes); the source's held-out test split
    tells how good the pretrained backbone is on classes it did not train on.
    """
    import numpy as np

    from tfdnc.datasets import DataSplits, ImageSet, load_dataset

    parts = {name: load_dataset(name) for name in sources_of(target, datasets)}
    pooled = {}
    for split in ("train", "test"):
        sets = [getattr(parts[name], split) for name in parts]
        images = np.concatenate([s.images for s in sets])
        labels = np.concatenate([np.asarray(s.labels, np.int64) + i * SOURCE_LABEL_OFFSET
                                 for i, s in enumerate(sets)])
        pooled[split] = ImageSet(images=images, labels=labels, name=f"without-{target}/{split}")
    return DataSplits(train=pooled["train"], test=pooled["test"], protocol="default")


def pretrain_worker(target: str, out_dir: str, epochs: int, steps: int | None, seed: int, threads: int) -> dict:
    """One backbone: a supervised K = 1 multi-similarity run (suite settings, no Symm) on `target`'s source."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    import tfdnc.datasets
    import tfdnc.train as tfdnc_train
    from tfdnc.config import TrainConfig

    splits = source_splits(target)
    name = f"suite-without-{target}"
    # A bench-only data set name for the pooled arrays (train.run loads data by name); the run's
    # config.json names it, so the pretraining run re-evaluates only inside this script.
    tfdnc.datasets.DATASETS[name] = lambda data_dir=None, **kw: splits
    extra = {"eval_every": epochs, **({"steps_per_epoch": steps} if steps else {})}
    settings = bench_peer.resolve_settings(name, "multi_similarity", "k1", seed, epochs, extra)
    values = bench_peer.full_settings(settings, splits)
    values["run_dir"] = out_dir
    start, cpu = time.perf_counter(), time.process_time()
    metrics = tfdnc_train.run(TrainConfig.from_dict(values, source="suite pretrain"), export=False, verbose=2)
    model = os.path.relpath(os.path.join(out_dir, "model.keras"), ROOT)
    return {"target": target, "sources": sources_of(target), "model": model,
            "train_images": int(len(splits.train.labels)), "train_classes": int(len(set(splits.train.labels.tolist()))),
            "test_classes": int(len(set(splits.test.labels.tolist()))), "epochs": epochs,
            "steps_per_epoch": values.get("steps_per_epoch"), "seed": seed, "threads": threads,
            "before": metrics.get("before"), "after": metrics.get("after"),
            "wall_seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu,
            "time": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}


def pretrain(args) -> int:
    """For each target: pretrain its backbone on the other suite data sets (one process each), unless done."""
    failed = []
    for target in args.datasets:
        out_dir = os.path.join(args.out, target)
        model = os.path.join(out_dir, "model.keras")
        if os.path.isfile(model) and os.path.isfile(os.path.join(out_dir, "metrics.json")):
            print(f"[suite pretrain] {target}: {model} exists, skipped", file=sys.stderr, flush=True)
            continue
        if os.path.isdir(out_dir):
            import shutil

            shutil.rmtree(out_dir)  # an unfinished pretraining starts over
        os.makedirs(args.out, exist_ok=True)
        log = os.path.join(args.out, f"{target}.log")
        job = {"target": target, "out_dir": out_dir, "epochs": args.epochs, "steps": args.steps_per_epoch,
               "seed": args.seed, "threads": args.threads}
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
               "OMP_NUM_THREADS": str(args.threads), "PYTHONHASHSEED": str(args.seed)}
        print(f"[suite pretrain] {target}: from {', '.join(sources_of(target))} -> {model} (log {log})",
              file=sys.stderr, flush=True)
        with open(log, "w") as f:
            code = subprocess.call([sys.executable, os.path.abspath(__file__), "pretrain-worker", json.dumps(job)],
                                   stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        if code != 0:
            failed.append(target)
            print(f"[suite pretrain] {target}: FAILED (exit {code}; log {log})", file=sys.stderr, flush=True)
    if failed:
        return 1
    return 0


def pretrain_worker_main(job_text: str) -> int:
    job = json.loads(job_text)
    record = pretrain_worker(job["target"], job["out_dir"], job["epochs"], job["steps"], job["seed"], job["threads"])
    with open(os.path.join(job["out_dir"], "pretrain.json"), "w") as f:
        json.dump(record, f, indent=1, default=float)
    with open(BACKBONE_RESULTS, "a") as f:
        f.write(json.dumps(record, default=float) + "\n")
    after = ((record.get("after") or {}).get("results") or {}).get("test") or {}
    print(f"[suite pretrain] {job['target']}: held-out source MAP@R {100 * after.get('map@r', float('nan')):.2f}, "
          f"R@1 {100 * after.get('recall@1', float('nan')):.2f} ({record['cpu_seconds']:.0f} CPU-s)", flush=True)
    return 0


# --- the table ---------------------------------------------------------------------

COLUMNS = (("recall@1", "R@1"), ("map@r", "MAP@R"), ("last3_recall@1", "R@1 last 3"), ("last3_map@r", "MAP@R last 3"))


def variant_of(record: dict) -> str:
    """The record's extra settings (--set) as text; '' for the plain suite."""
    extra = record.get("overrides") or {}
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(extra.items()))


def group(records: list[dict]) -> dict:
    """(regime, loss, variant, dataset, config) -> the runs' summaries (one per seed; a rerun of a seed
    with the same settings replaces the earlier one)."""
    latest: dict[tuple, dict] = {}
    for r in records:
        latest[(r["regime"], r["loss"], variant_of(r), r["dataset"], r["config"], r["seed"])] = r
    groups: dict[tuple, list[dict]] = {}
    for (regime, loss, variant, dataset, config, _), r in sorted(latest.items(), key=lambda kv: kv[0][-1]):
        # the per-epoch figures recomputed from the stored epochs (records older than a new figure get it too)
        summary = {**r["summary"], **bench_peer.epoch_summary(r.get("epoch_results") or [], r["summary"]),
                   "seed": r["seed"]}
        groups.setdefault((regime, loss, variant, dataset, config), []).append(summary)
    return groups


def _mean_sd(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values) * scale
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def _values(items: list[dict], key: str) -> list[float]:
    return [i[key] for i in items if i.get(key) is not None]


def per_seed_suite_means(per_set: list[list[dict]], key: str) -> list[float]:
    """For each seed that every data set has: the mean of `key` over the data sets (its sd over seeds is the
    suite average's run-to-run spread, the "one sd" of a comparison between settings)."""
    by_set = [{i["seed"]: i[key] for i in items if i.get(key) is not None} for items in per_set]
    seeds = sorted(set.intersection(*(set(s) for s in by_set))) if by_set else []
    return [statistics.fmean(s[seed] for s in by_set) for seed in seeds]


def markdown(records: list[dict], datasets=DATASETS, settings=SETTINGS, seeds=SEEDS) -> str:
    groups = group(records)
    sections = sorted({k[:3] for k in groups}, key=lambda k: (k[0] != "scratch", k[1] != "multi_similarity", k))
    out = []
    for regime, loss, variant in sections:
        title = f"#### {loss}, {regime} regime" + (f", {variant}" if variant else "")
        head = (["data set", "setting", "seeds"] + [t for _, t in COLUMNS]
                + ["final - best MAP@R", "swing", "s/step", "CPU s/step", "masks' cosine", "masks off %"])
        lines = [title, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        present = [c for c in settings if any((regime, loss, variant, d, c) in groups for d in datasets)]
        present += sorted({k[4] for k in groups if k[:3] == (regime, loss, variant)} - set(present))
        for dataset in list(datasets) + sorted({k[3] for k in groups if k[3] not in datasets}):
            for config in present:
                items = groups.get((regime, loss, variant, dataset, config))
                if not items:
                    continue
                cells = [dataset, SIDE_NAMES.get(config, config), str(len(items))]
                cells += [_mean_sd(_values(items, key)) for key, _ in COLUMNS]
                cells.append(_mean_sd(_values(items, "final_minus_best_map@r")))
                cells.append(_mean_sd(_values(items, "swing_map@r")))
                cells.append(_mean_sd(_values(items, "steady_step_s"), 1.0, 4))
                cells.append(_mean_sd(_values(items, "steady_step_cpu_s"), 1.0, 4))
                cells.append(_mean_sd(_values(items, "mask_cosine"), 1.0, 3))
                cells.append(_mean_sd(_values(items, "mask_off_share"), 100.0, 1))
                lines.append("| " + " | ".join(cells) + " |")
        # the suite average: the mean over data sets of each data set's seed mean, only where every data set has it
        lines += ["", f"Suite average over {', '.join(datasets)} (mean over data sets of the seed means):", "",
                  "| setting | data sets | seeds per set | R@1 | MAP@R | R@1 last 3 | MAP@R last 3 | s/step "
                  "| CPU s/step | MAP@R ± sd over seeds | masks' cosine |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for config in present:
            per_set = [groups.get((regime, loss, variant, d, config)) for d in datasets]
            if not all(per_set):
                have = sum(1 for p in per_set if p)
                lines.append(f"| {SIDE_NAMES.get(config, config)} | {have} of {len(datasets)} | - | - | - | - | - | - "
                             f"| - | - | - |")
                continue
            cells = [SIDE_NAMES.get(config, config), str(len(datasets)),
                     "/".join(str(len(p)) for p in per_set)]
            for key in [k for k, _ in COLUMNS] + ["steady_step_s", "steady_step_cpu_s"]:
                means = [statistics.fmean(_values(p, key)) for p in per_set if _values(p, key)]
                scale, digits = (1.0, 4) if key.startswith("steady_step") else (100.0, 2)
                cells.append(f"{statistics.fmean(means) * scale:.{digits}f}" if len(means) == len(datasets) else "-")
            cells.append(_mean_sd(per_seed_suite_means(per_set, "map@r")))
            cosines = [statistics.fmean(_values(p, "mask_cosine")) for p in per_set if _values(p, "mask_cosine")]
            cells.append(f"{statistics.fmean(cosines):.3f}" if len(cosines) == len(datasets) else "-")
            lines.append("| " + " | ".join(cells) + " |")
        # what is missing of the planned grid (datasets x settings x seeds)
        missing = []
        for dataset in datasets:
            # every setting, the peer's in the papers' regime too (it starts from the same tfdnc backbone)
            planned = list(settings)
            short = [f"{config} {len(items)}/{len(seeds)}" for config in planned
                     for items in [groups.get((regime, loss, variant, dataset, config)) or []]
                     if len(items) < len(seeds)]
            if short:
                missing.append(f"{dataset}: {', '.join(short)}")
        if missing:
            lines += ["", f"Not yet complete (seeds measured / planned): {'; '.join(missing)}."]
        out.append("\n".join(lines))
    return "\n\n".join(out)


TABLE_HEAD = """## The benchmark suite: defaults chosen across data sets

**Rule: tfdnc's defaults are chosen by the suite's average across its data sets, never by one data set.**
`shapes` was built to show D&C's gain; the other three were not designed for or against any method.
All four are generated by tfdnc itself from what its dependencies ship (no download), split by class
(train classes and test classes disjoint), 32 x 32 RGB, and can be picked with `--dataset NAME`:

| data set | what a class is | train / test classes | images per class | statistics |
|---|---|---|---|---|
| `shapes` | a shape, texture, palette or layout (4 families) | 200 / 200 | 12 | drawn objects on backgrounds; D&C's showcase |
| `glyphs` | a character (Latin, Greek, Cyrillic, arrows, math) in 16 DejaVu / STIX faces | 200 / 200 | 12 | strokes; face, size, angle, place, colours vary |
| `textures` | a random texture recipe (2 gratings, a noise band, a contrast curve, 2 colours) | 200 / 200 | 12 | full-frame spectra and colours |
| `patches` | a place in one of three shipped photographs | 169 / 147 (left / right of each photo) | 12 | natural images; re-taken crops |

Every run: tfdnc's small CNN, d = 64, P x M = 4 x 8 batches, Adam 1e-3 (coupled weight decay 1e-4),
10 epochs of ceil(train images / 32) steps, no augmentation, D&C K 1 -> 4 (doubling every 2 epochs,
full embedding from epoch 8): TrainConfig's defaults, the same for the peer, whose sampler, miner and
loss are pytorch-metric-learning's (docs/bench/peer.md). The test set is evaluated after every epoch;
"last 3" is the mean after epochs 8-10, "final - best" the final MAP@R minus the best epoch's, "swing"
the mean absolute change of MAP@R between consecutive epochs over the last five. Mean ±
sample sd over seeds. s/step: the training loop's wall time per step from epoch 2 on (tfdnc: tf.data
input included; peer: batches pre-gathered in memory); CPU s/step: the CPU time of the run's whole
process (all its threads) over the same steps, which load on the machine does not inflate. Masks: learnable D&C runs only, at the end:
mean pairwise cosine of relu(m) over the K = 4 learners and the share of the K x d entries switched off
(below a tenth of their mask's largest entry; the results file also has the share of exact zeros and
the masks themselves).

```
# the peer's environment (torch, pytorch-metric-learning, tfdnc): docs/bench/peer.md
export OMP_WAIT_POLICY=PASSIVE
.bench-venv/bin/python bench/suite.py run --jobs 2 --threads 1 # default loss, 4 data sets x 6 settings x 3 seeds
.bench-venv/bin/python bench/suite.py run --jobs 2 --threads 1 --losses margin   # the margin-loss rows
.bench-venv/bin/python bench/suite.py run --jobs 8 --threads 2 --losses multi_similarity margin  # 16 cores
# extra TrainConfig fields form rows of their own, e.g. a learning-rate schedule for K = 1 and the default
.bench-venv/bin/python bench/suite.py run --settings k1 dnc-learnable-symm --set lr_schedule=cosine --set warmup_epochs=1
# the papers' regime: one backbone per target, pretrained on the other three data sets (runs/suite-backbones/)
python bench/suite.py pretrain --threads 2
python bench/suite.py run --regime papers --settings k1 dnc-learnable dnc-fixed --jobs 1 --threads 2
python bench/suite.py table                                    # this page, from bench/results/suite.jsonl
```

**The papers' regime** (issue 20 item 3; `--regime papers`): no ImageNet weights can be downloaded
here, so each target's backbone is pretrained by tfdnc itself, supervised (K = 1, multi-similarity,
no Symm, the suite's CNN, d = 64 and batches; 20 epochs x 150 steps, cosine schedule; about 130 CPU-s
each) on **the other
three suite data sets** pooled (leave one out: `shapes`' backbone sees glyphs, textures and patches;
6,700-7,200 images of 560-600 classes). So no image and no class of the target, nor of its data set,
is seen in pretraining, as ImageNet holds none of CUB's images; unlike ImageNet for CUB, the source
is also of another kind of image than the target, which makes the transfer harder than the
papers' (their other data sets' test splits measure the backbone: `bench/results/suite_backbones.jsonl`).
A shapes-only source (another seed of `shapes`, as `bench/bench_method.py regime` uses) would
share some training classes with the target and exists only for `shapes`. The target runs then use the
`papers-emulated` preset's fields: that backbone (its embedding head starts fresh), frozen BatchNorm
statistics, the network at 1e-4 and the masks at 100x (1e-2; TPAMI: `--mask-lr-mult=100` over a base
rate of 1e-5, README.md:29-36 and experiment/margin_loss_resnet50.py:18 and :196 of
CompVis/metric-learning-divide-and-conquer-improved; 1e-4 here because a few hundred steps at 1e-5
hardly move a network, nor masks at 1e-3), a constant rate (TPAMI's StepLR has step_size=inf,
experiment/margin_loss_resnet50.py:200-205), and most steps at the final K: K 1 -> 2 -> 4 after epochs
1 and 2, so 8 of 10 epochs at K = 4 (TPAMI: K = 2^(epoch // mod_epoch), train.py:719-722, reaches 32 at
epoch 10 of 180), no full-embedding phase. Everything else (data, batches, 10 epochs, evaluation) is
the scratch regime's.

Cost: one run takes about 60-75 s of CPU time (all threads; measured per run, `cpu_seconds` in the
results file), so the default loss's 72 runs are about 80 CPU-minutes: about 45-60 minutes on 2
idle cores (`--jobs 2 --threads 1`), and both losses (144 runs) about 3 CPU-hours, 15-25 minutes
with `--jobs 8 --threads 2` on 16 cores. Rerunning a command skips the runs already in the results
file (keyed by all their settings), so an interrupted suite continues where it stopped.

Speed figures are only as good as the machine's quiet: the line below gives the cores and the load
average the runs met (each run's is in the results file). Under load they are noisy; tfdnc and the
peer ran interleaved, so both met the same load.
"""


def provenance(records: list[dict]) -> str:
    """When, on how many cores and under what load the recorded runs ran."""
    times = sorted(r["time"] for r in records if r.get("time"))
    loads = [r["loadavg_1min"][0] for r in records if (r.get("loadavg_1min") or [None])[0] is not None]
    cores = sorted({r.get("cpu_count") for r in records if r.get("cpu_count")})
    jobs = sorted({r.get("threads") for r in records if r.get("threads")})
    text = (f"{len(records)} run(s), finished {times[0]} - {times[-1]} UTC on {'/'.join(map(str, cores))} core(s), "
            f"{'/'.join(map(str, jobs))} thread(s) per run")
    if loads:
        text += f"; 1-minute load average at their starts {min(loads):.1f} - {max(loads):.1f}"
    return text + "."


# The hand-written part of the table's file (what the runs show), between these markers after the head,
# is kept when the tables are regenerated.
FINDINGS_START = "<!-- findings: written by hand, kept by `bench/suite.py table` -->"
FINDINGS_END = "<!-- end of findings -->"


def kept_findings(path: str) -> str:
    """The hand-written findings of an earlier table file, markers included ('' if none)."""
    if not os.path.exists(path):
        return ""
    with open(path) as f:
        old = f.read()
    if FINDINGS_START not in old or FINDINGS_END not in old:
        return ""
    return FINDINGS_START + old.split(FINDINGS_START, 1)[1].split(FINDINGS_END, 1)[0] + FINDINGS_END + "\n\n"


def table(args) -> int:
    records = read_results(args.results)
    findings = kept_findings(args.out) if args.out != "-" else ""
    text = (TABLE_HEAD + "\n" + findings
            + (provenance(records) + "\n\n" + markdown(records) if records else "No runs recorded yet.") + "\n")
    if args.out == "-":
        sys.stdout.write(text)
    else:
        with open(args.out, "w") as f:
            f.write(text)
        print(f"[suite] {len(records)} run(s) -> {args.out}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    r = commands.add_parser("run", help="train the runs not yet in --results")
    r.add_argument("--datasets", nargs="+", default=list(DATASETS))
    r.add_argument("--losses", nargs="+", default=["multi_similarity"], choices=bench_peer.LOSSES)
    r.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=bench_peer.CONFIGS,
                   help="pml: the peer; the others tfdnc's configurations (bench/bench_peer.py)")
    r.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    r.add_argument("--epochs", type=int, default=None, help="epochs of every run (default: TrainConfig's)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a TrainConfig field for every run (JSON value), e.g. --set lr_schedule=cosine; repeatable; "
                        "its runs form rows of their own")
    r.add_argument("--regime", choices=sorted(REGIMES), default="scratch",
                   help="scratch: TrainConfig's from-scratch training; papers: a pretrained backbone "
                        "(--set backbone_weights=PATH, '{dataset}' replaced by the target) trained slowly with "
                        "the masks 100x (the papers-emulated preset's fields)")
    r.add_argument("--jobs", type=int, default=1, help="runs at once (each its own process)")
    r.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1),
                   help="intra- and inter-op threads of each run (default: all cores); --jobs x --threads "
                        "should not exceed the cores")
    r.add_argument("--results", default=RESULTS, help="the JSON-lines results file (appended; default: %(default)s)")
    r.add_argument("--run-root", default=os.path.join(tempfile.gettempdir(), "tfdnc-suite"),
                   help="per-run logs and (deleted) run directories")
    p = commands.add_parser("pretrain", help="the papers' regime's backbones: one per target, pretrained on the "
                                             "other suite data sets (K = 1 multi-similarity)")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS, help="the targets")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--steps-per-epoch", type=int, default=150,
                   help="steps per epoch (default: %(default)s; 0: one pass over the source's images)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1))
    p.add_argument("--out", default=BACKBONES,
                   help="one folder per target: OUT/TARGET/model.keras (default: %(default)s)")
    w = commands.add_parser("pretrain-worker", help=argparse.SUPPRESS)
    w.add_argument("job")
    t = commands.add_parser("table", help="write the markdown table")
    t.add_argument("--results", default=RESULTS)
    t.add_argument("--out", default=TABLE, help="markdown file, or - for stdout (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        if args.jobs < 1 or args.threads < 1:
            raise SystemExit("--jobs and --threads must be >= 1")
        return run(args)
    if args.command == "pretrain":
        return pretrain(args)
    if args.command == "pretrain-worker":
        return pretrain_worker_main(args.job)
    return table(args)


if __name__ == "__main__":
    sys.exit(main())
