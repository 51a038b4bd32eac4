"""Paper-size models on one machine: mask and training memory and time, per shape and dtype (issue #22).

For each shape (``_shapes.py``: random-initialised models of the shapes of SmolLM2-135M, Llama-3.2-1B,
Qwen2-1.5B, Gemma-2-2B, with SmolLM2's tokenizer and so its 49,152-token vocabulary), written once as a
local HF directory under ``--work`` in fp32 and in bf16, and for each dtype, three phases, each in a
fresh subprocess of this script (``--child PHASE``):

* ``inference``: load the model, then two forwards (``torch.inference_mode``, the training loss) on each
  of the batches the training phase's clients would see at its first steps (same shard, same size);
* ``mask``: ``meerkat mask``'s work (load, built-in calibration corpus, ``compute_mask``, save);
* ``train``: ``build_federation`` (load, mask, ``SparseCoordinates`` setup, encoding) = the setup, then one
  round (``run_round``: ``--clients`` clients x ``--steps`` ZO steps) = the steady state, then a sparse
  ZO step against two plain forwards on one batch, interleaved ``--reps`` times (step / two forwards).

Memory is the peak resident set (VmHWM) of each subprocess, loading included, and inside it per phase:
VmHWM at the end of loading / setup, then reset (``clear_refs``) and read again after the round (not
``ru_maxrss`` from ``wait4``: a spawned child's starts from the parent's peak). A phase whose
estimated peak exceeds ``--budget-gib`` (or the memory available now) is not run: the table gives the
estimate instead. The mask uses the fewest score groups (``compute_mask(score_groups=...)``, the same
mask) whose estimate fits; training uses a ``random`` mask when no sensitivity mask could be computed.

    python benchmarks/scale.py [--shapes ...] [--dtypes fp32 bf16] [--out benchmarks/results/scale.json]
    python benchmarks/scale.py --quick        # a small Llama shape in fp32 (well under a minute)
    python benchmarks/scale.py --code DIR     # measure another checkout's meerkat_core (before/after)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import _shapes  # noqa: E402

PHASES = ("inference", "mask", "train")
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
GIB = 1 << 30


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the small 'quick' shape, small settings (CI)")
    p.add_argument("--shapes", nargs="+", choices=list(_shapes.SHAPES), default=None)
    p.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=None, help="default: fp32 bf16 (--quick: fp32)")
    p.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    p.add_argument("--work", default=None, help="scratch directory for the model directories, masks, partition "
                                                "(default: $TMPDIR/meerkat-scale; not the repository)")
    p.add_argument("--out", default="benchmarks/results/scale.json")
    p.add_argument("--budget-gib", type=float, default=18.0, help="do not run a phase whose estimated peak exceeds this")
    p.add_argument("--code", default=None, help="run the phases against the meerkat_core in this directory")
    p.add_argument("--density", type=float, default=1e-3)
    p.add_argument("--score-groups", default="auto",
                   help="compute_mask's score_groups: a number, or auto (the fewest whose estimate fits the budget)")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--mask-batch-size", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8, help="training batch (examples)")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="local steps per client in the round")
    p.add_argument("--reps", type=int, default=2, help="interleaved repetitions of (two forwards, one ZO step)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--keep-models", action="store_true", help="keep the model directories (default: delete each "
                                                              "shape's after its phases)")
    p.add_argument("--child", choices=PHASES, help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.shapes = args.shapes or ["quick"]
        args.samples, args.seq_len, args.steps, args.reps, args.batch_size = 4, 32, 2, 1, 4
        args.keep_models = True
        args.dtypes = args.dtypes or ["fp32"]
    args.dtypes = args.dtypes or ["fp32", "bf16"]
    args.shapes = args.shapes or ["smollm2-135m", "llama-3.2-1b", "qwen2-1.5b", "gemma-2-2b"]
    return args


# -- child ----------------------------------------------------------------------------------------
def _status() -> dict[str, int | None]:
    return {"rss": _common.rss_bytes(), "hwm": _common.hwm_bytes()}


def _client_batches(loaded: Any, spec: dict[str, Any]) -> tuple[Any, list[Any]]:
    """The training loss and the batches the first ``steps`` steps of each client would use (offset 0)."""
    from meerkat_core.encoding import encode_split, label_batch
    from meerkat_core.fed.client import batch_indices
    from meerkat_core.partition import load_partition
    from meerkat_core.scoring import label_loss
    from meerkat_core.tasks import get_task, load_task_data

    task = get_task(spec["task"])
    manifest = load_partition(spec["partition"])
    enc = encode_split(loaded.tokenizer, task, load_task_data(task).train, max_length=spec["max_length"])
    out = []
    for c in range(min(spec["clients"], manifest.num_clients)):
        shard = enc.subset(manifest.client_indices(c))
        for t in range(spec["steps"]):
            idx = batch_indices(0, c, len(shard), t * spec["batch_size"], spec["batch_size"])
            out.append(label_batch(shard, idx, loaded.tokenizer.pad_token_id))
    return label_loss, out


def child(phase: str, spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(spec["threads"])
    import meerkat_core
    from meerkat_core.models import load_model

    res: dict[str, Any] = {"phase": phase, "meerkat_core": str(Path(meerkat_core.__file__).parent)}
    _common.trim_heap()
    res["interpreter_rss"] = _common.rss_bytes()
    t0 = time.perf_counter()
    if phase == "train":
        from meerkat_core.config.train import EvalSettings, TrainConfig
        from meerkat_core.fed.simulator import build_federation, run_round

        with tempfile.TemporaryDirectory() as out:
            cfg = TrainConfig(model=spec["model"], mask=spec["mask"], partition=spec["partition"], task=spec["task"],
                              out=out, rounds=1, local_steps=spec["steps"], clients_per_round=spec["clients"],
                              batch_size=spec["batch_size"], max_length=spec["max_length"], device="cpu",
                              dtype=spec["dtype"], eval=EvalSettings(limit=16), seed=0)
            fed = build_federation(cfg)
        res["setup_s"] = time.perf_counter() - t0
        res["setup_peak"] = _common.hwm_bytes()
        res["k"], res["d"] = fed.provenance["k"], fed.provenance["d"]
        res["param_bytes"] = sum(p.numel() * p.element_size() for p in fed.loaded.model.parameters())
        _common.trim_heap()
        res["after_setup_rss"] = _common.rss_bytes()
        res["hwm_reset"] = _common.reset_hwm()
        t0 = time.perf_counter()
        outcome, _, _ = run_round(fed, 1)
        res["round_s"] = time.perf_counter() - t0
        res["round_steps"] = sum(o.steps for o in outcome.clients)
        res["steady_peak"] = _common.hwm_bytes()
        res.update(_step_vs_forwards(fed, spec))
    elif phase == "inference":
        loaded = load_model(spec["model"], device="cpu", dtype=spec["dtype"])
        res["load_s"] = time.perf_counter() - t0
        res["param_bytes"] = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
        loss, batches = _client_batches(loaded, spec)
        res["load_peak"] = _common.hwm_bytes()
        res["batch_shapes"] = [list(b.input_ids.shape) for b in batches]
        t0 = time.perf_counter()
        with torch.inference_mode():
            for b in batches:
                for _ in range(2):
                    float(loss(loaded.model, b))
        res["forwards_s"] = time.perf_counter() - t0
    else:  # mask
        from meerkat_core.corpus import build_calibration
        from meerkat_core.mask import compute_mask, save_mask

        loaded = load_model(spec["model"], device="cpu", dtype=spec["dtype"])
        res["load_s"] = time.perf_counter() - t0
        res["load_peak"] = _common.hwm_bytes()
        res["param_bytes"] = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
        method = spec["mask_method"]
        calib = None
        if method == "sensitivity":
            calib = build_calibration("builtin", loaded.tokenizer, samples=spec["samples"], seq_len=spec["seq_len"],
                                      seed=0)
        extra = {"score_groups": spec["score_groups"]} if spec["score_groups"] > 1 else {}  # older code lacks it
        t0 = time.perf_counter()
        mask = compute_mask(
            loaded.model, calib.batches(spec["mask_batch_size"]) if calib else None, density=spec["density"],
            method=method, seed=0, model_name=spec["model"], corpus=calib.info if calib else None,
            batch_size=spec["mask_batch_size"], num_batches=calib.num_batches(spec["mask_batch_size"]) if calib else None,
            **extra,
        )
        res["mask_s"] = time.perf_counter() - t0
        save_mask(mask, spec["mask"])
        res["k"], res["d"], res["method"] = mask.k, mask.meta.d, method
    res["end"] = _status()
    # VmHWM belongs to this process's own address space (ru_maxrss of a spawned child would start from
    # the parent's peak, which exec inherits); in ``train`` it was reset after the setup
    res["peak_rss"] = max(v for v in (res.get("setup_peak"), res.get("steady_peak"), res["end"]["hwm"]) if v)
    return res


def _step_vs_forwards(fed: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """Median wall and CPU time of one sparse ZO step over two plain forwards on one batch, interleaved."""
    import torch

    from meerkat_core.zo import derive_key, zo_step

    client = next(iter(fed.clients.values()))
    idx = list(range(min(spec["batch_size"], client.num_examples)))
    loss = fed.runtime.loss_fn(client.data, idx)
    coords = fed.runtime.coords

    def forwards() -> None:
        with torch.inference_mode():
            float(loss())
            float(loss())

    forwards()  # warm-up
    fw, st, cfw, cst = [], [], [], []
    for r in range(spec["reps"]):
        t, c = time.perf_counter(), time.process_time()
        forwards()
        fw.append(time.perf_counter() - t)
        cfw.append(time.process_time() - c)
        t, c = time.perf_counter(), time.process_time()
        zo_step(coords, loss, derive_key(7, 1, 0, r), 1e-9, 1e-3)
        st.append(time.perf_counter() - t)
        cst.append(time.process_time() - c)
    med = statistics.median
    return {"two_forwards_s": med(fw), "zo_step_s": med(st), "step_over_two_forwards": med(st) / med(fw),
            "step_over_two_forwards_cpu": med(cst) / med(cfw), "timing_batch": [len(idx), max(len(client.data.prompts[i]) for i in idx)]}


# -- parent ---------------------------------------------------------------------------------------
def mem_available() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def estimate(shape: _shapes.Shape, dtype: str, args: argparse.Namespace, interpreter: int,
             groups: int = 1) -> dict[str, int]:
    """Peak resident bytes each phase needs (upper estimates: see the module doc of mask/compute.py);
    ``groups``: the mask's score groups (its float32 accumulator is d / groups)."""
    d, size = shape.d(), 2 if dtype == "bfloat16" else 4
    cfg = shape.config
    h, layers, inter, vocab = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"], _shapes.SMOL_VOCAB
    weights = d * size
    tokens = args.batch_size * args.max_length
    logits = tokens * vocab * 4 * 3  # fp32 logits, log-softmax, and a temporary
    inference = interpreter + weights + logits + tokens * (4 * h + 2 * inter) * 4
    train = inference + int(d * args.density) * 64 + (64 << 20)  # master, indices, z, casts; encodings
    mtokens = args.mask_batch_size * args.seq_len
    saved = mtokens * layers * (12 * h + 4 * inter) * size + mtokens * vocab * 4 * 3  # activations for backward
    grads_in_flight = 3 * shape.largest() * 4  # the tied embedding's gradient is summed over two uses
    mask = interpreter + weights + 4 * -(-d // groups) + grads_in_flight + saved
    return {"inference": inference, "mask": mask, "train": train, "weights": weights, "d": d, "score_groups": groups}


def choose_groups(shape: _shapes.Shape, dtype: str, args: argparse.Namespace, interpreter: int) -> int:
    if args.score_groups != "auto":
        return int(args.score_groups)
    budget = int(args.budget_gib * GIB)
    for groups in (1, 2, 3, 4, 6, 8):
        if estimate(shape, dtype, args, interpreter, groups)["mask"] <= budget:
            return groups
    return 8


def run_child(phase: str, spec: dict[str, Any], code: str | None) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", phase, "--spec", json.dumps(spec)]
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "MKL_NUM_THREADS": str(spec["threads"]),
           "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    if code:
        env["PYTHONPATH"] = os.pathsep.join([code, env.get("PYTHONPATH", "")])
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, stdout=out, stderr=err, env=env, text=True)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        lines = [ln for ln in out.read().splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            return {"phase": phase, "failed": True, "returncode": proc.returncode, "stderr": err.read()[-3000:],
                    "wall_s": wall}
    res = json.loads(lines[-1])
    res["wall_s"] = wall
    return res


def interpreter_rss(code: str | None) -> int:
    """Resident memory of a child that imported everything but loaded no model (the fixed cost)."""
    cmd = [sys.executable, "-c", "import torch, transformers, meerkat_core.fed.simulator, meerkat_core.mask, "
                                 "meerkat_core.models, sys; sys.path.insert(0, sys.argv[1]); import _common; "
                                 "print(_common.hwm_bytes())", str(Path(__file__).resolve().parent)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if code:
        env["PYTHONPATH"] = os.pathsep.join([code, env.get("PYTHONPATH", "")])
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def tokenizer_dir(work: Path) -> Path:
    """SmolLM2's tokenizer files, copied once into ``work`` (the model directories take theirs from here)."""
    import shutil

    dest = work / "tokenizer"
    if not (dest / "tokenizer.json").is_file():
        from meerkat_core.models.gguf_cache import ensure_smollm2_dir

        tmp = work / "tokenizer.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        _shapes.copy_tokenizer(ensure_smollm2_dir(), tmp)
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    return dest


def _fits(need: int, budget: int) -> tuple[bool, str]:
    avail = mem_available()
    if need > budget:
        return False, f"estimated peak {need / GIB:.1f} GiB > budget {budget / GIB:.1f} GiB"
    if avail is not None and need > avail - (1 << 30):
        return False, f"estimated peak {need / GIB:.1f} GiB > available now {avail / GIB:.1f} GiB - 1 GiB"
    return True, ""


def run_shape(name: str, args: argparse.Namespace, work: Path, task: str, partition: str, interp: int) -> dict[str, Any]:
    shape = _shapes.SHAPES[name]
    out: dict[str, Any] = {"shape": name, "source": shape.source, "d": shape.d(), "real_vocab": shape.real_vocab,
                           "real_d": shape.d(shape.real_vocab), "dtypes": {}}
    budget = int(args.budget_gib * GIB)
    for dt in args.dtypes:
        dtype = DTYPES[dt]
        est = estimate(shape, dtype, args, interp, choose_groups(shape, dtype, args, interp))
        row: dict[str, Any] = {"estimate": est, "skipped": {}}
        out["dtypes"][dt] = row
        ok, why = _fits(est["inference"], budget)
        if not ok:  # not even the model and a forward fit: nothing runs
            row["skipped"] = {p: _fits(est[p], budget)[1] for p in args.phases}
            continue
        t0 = time.perf_counter()
        model_dir = _shapes.write_model_dir(shape, work / f"{name}-{dtype}", dtype=dtype,
                                            tokenizer_dir=tokenizer_dir(work))
        row["write_model_s"] = time.perf_counter() - t0
        spec = {"model": str(model_dir), "dtype": dt, "task": task, "partition": partition, "threads": args.threads,
                "density": args.density, "samples": args.samples, "seq_len": args.seq_len,
                "mask_batch_size": args.mask_batch_size, "batch_size": args.batch_size, "max_length": args.max_length,
                "clients": args.clients, "steps": args.steps, "reps": args.reps,
                "mask": str(work / f"{name}-{dtype}.mask.safetensors"), "mask_method": "sensitivity",
                "score_groups": est["score_groups"]}
        for phase in args.phases:
            ok, why = _fits(est[phase], budget)
            key = phase
            if not ok:
                row["skipped"][phase] = why
                if phase != "mask":
                    continue
                spec["mask_method"], key = "random", "mask_random"  # training still needs a mask
            print(f"  {name} {dt}: {key} (estimate {est[phase if ok else 'inference'] / GIB:.1f} GiB) ...",
                  file=sys.stderr, flush=True)
            res = run_child(phase, spec, args.code)
            row[key] = res
            if res.get("failed"):
                print(f"    failed ({res['returncode']}): {res['stderr'][-500:]}", file=sys.stderr)
            else:
                print(f"    peak {res['peak_rss'] / GIB:.2f} GiB in {res['wall_s']:.0f} s", file=sys.stderr, flush=True)
        _derive(row)
    if "fp32" in out["dtypes"] and "bf16" in out["dtypes"]:
        out["mask_overlap_bf16_vs_fp32"] = _overlap(work / f"{name}-float32.mask.safetensors",
                                                    work / f"{name}-bfloat16.mask.safetensors")
    if not args.keep_models:
        import shutil

        for dt in args.dtypes:
            shutil.rmtree(work / f"{name}-{DTYPES[dt]}", ignore_errors=True)
    return out


def _derive(row: dict[str, Any]) -> None:
    """Ratios: mask peak over the fp32 weights; training peaks over the inference peak."""
    w32 = row["estimate"]["d"] * 4
    m = row.get("mask")
    if m and not m.get("failed"):
        row["mask_peak_over_fp32_weights"] = m["peak_rss"] / w32
    inf, tr = row.get("inference"), row.get("train")
    if inf and tr and not inf.get("failed") and not tr.get("failed"):
        row["train_peak_over_inference_peak"] = tr["peak_rss"] / inf["peak_rss"]
        row["train_setup_peak_over_inference_peak"] = tr["setup_peak"] / inf["peak_rss"]
        row["train_steady_peak_over_inference_peak"] = tr["steady_peak"] / inf["peak_rss"]


def _overlap(a: Path, b: Path) -> dict[str, Any] | None:
    if not (a.is_file() and b.is_file()):
        return None
    from meerkat_core.mask import compare_masks, load_mask

    ma, mb = load_mask(a), load_mask(b)
    if ma.meta.method != "sensitivity" or mb.meta.method != "sensitivity":
        return None
    return compare_masks(ma, mb).to_dict()


@_common.keeps_torch_threads
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    if args.child:
        print(json.dumps(child(args.child, json.loads(args.spec))))
        return {}
    work = Path(args.work or Path(tempfile.gettempdir()) / "meerkat-scale")
    work.mkdir(parents=True, exist_ok=True)
    task = _common.ensure_small_task(work / "task")
    partition = str(_common.ensure_partition(work / f"partition-{args.clients}", task, args.clients))
    interp = interpreter_rss(args.code)
    res: dict[str, Any] = {
        "machine": _common.machine("cpu"),
        "mem_total": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "mem_available_start": mem_available(),
        "config": {k: v for k, v in vars(args).items() if k not in ("child", "spec")},
        "tokenizer": "SmolLM2's (vocabulary 49,152) for every shape",
        "interpreter_rss": interp,
        "gpu": "not measured: no GPU on this machine" if not _common.cuda_available() else "present but not used (CPU rows only)",
        "shapes": [],
    }
    for name in args.shapes:
        res["shapes"].append(run_shape(name, args, work, task, partition, interp))
    report(res)
    _common.write_json(Path(args.out), res)
    return res


def _g(n: float | None) -> str:
    return "-" if n is None else f"{n / GIB:.2f}"


def report(res: dict[str, Any]) -> None:
    print(f"peak RSS in GiB (fresh subprocess per phase), threads {res['config']['threads']}; "
          f"tokenizer: {res['tokenizer']}")
    head = (f"{'shape':<13} {'dtype':<5} {'d':>13} {'weights':>7} {'infer':>6} {'mask s':>7} {'mask':>6} "
            f"{'/w32':>5} {'setup':>6} {'steady':>6} {'train':>6} {'/inf':>5} {'step/2fw':>8}")
    print(head)
    for s in res["shapes"]:
        for dt, r in s["dtypes"].items():
            inf, m, tr = r.get("inference") or {}, r.get("mask") or {}, r.get("train") or {}
            cells = [f"{s['shape']:<13}", f"{dt:<5}", f"{s['d']:>13,}", f"{_g(r['estimate']['weights']):>7}",
                     f"{_g(inf.get('peak_rss')):>6}",
                     f"{m['mask_s']:>7.1f}" if 'mask_s' in m else f"{'-':>7}", f"{_g(m.get('peak_rss')):>6}",
                     f"{r['mask_peak_over_fp32_weights']:>5.2f}" if 'mask_peak_over_fp32_weights' in r else f"{'-':>5}",
                     f"{_g(tr.get('setup_peak')):>6}", f"{_g(tr.get('steady_peak')):>6}", f"{_g(tr.get('peak_rss')):>6}",
                     f"{r['train_peak_over_inference_peak']:>5.2f}" if 'train_peak_over_inference_peak' in r else f"{'-':>5}",
                     f"{tr['step_over_two_forwards']:>8.3f}" if 'step_over_two_forwards' in tr else f"{'-':>8}"]
            print(" ".join(cells))
            if r["estimate"].get("score_groups", 1) > 1 and "mask" in r:
                print(f"{'':<19} mask computed in {r['estimate']['score_groups']} score groups")
            for phase, why in r["skipped"].items():
                print(f"{'':<19} not run: {phase}: {why}")
            for phase in PHASES:
                if (r.get(phase) or {}).get("failed"):
                    print(f"{'':<19} {phase} FAILED (exit {r[phase]['returncode']})")
        ov = s.get("mask_overlap_bf16_vs_fp32")
        if ov:
            print(f"{'':<19} bf16 vs fp32 sensitivity mask: Jaccard {ov['jaccard']:.4f}")


if __name__ == "__main__":
    main(sys.argv[1:])
