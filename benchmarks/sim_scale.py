"""Simulation scale: clients per second on one model copy, 10 to 1000 clients (issue #7, item 6).

For each N in ``--num-clients``: ``meerkat partition --clients N --scheme iid``, one federation
(``build_federation``: ONE model copy shared by all N clients; a client is its data shard and its
k-vector), then rounds driven the way ``meerkat_core.fed.simulator.run_round`` drives them (every
message through bytes), timing client, client sync and server apart:

* ``sampled``  ``--rounds`` rounds of ``--clients-per-round`` clients (min(N, m)), T local steps each;
* ``all``      then one round with every one of the N clients (each first catches up, in replay mode,
               on every global update it missed: the history grows with N x T per round, so the
               in-process catch-up is O(N^2 T k) for a full-participation round after another one).

Reported per N and scenario: wall and process CPU time per round, clients/s and client steps/s (wall;
clients per CPU-second too, which holds on a shared CPU),
the shares of client sync (replay catch-up), client ZO steps and server (replay + GradIP + aggregation),
mean bytes down/up per client, plus setup time and resident memory after setup (per client: the
memory growth over the smallest N).

The default model is ``tiny-llama`` (a 2-layer random LLaMA, k = 3,220): a SmolLM2-135M ZO step takes
~3 s of CPU at batch 8 on one core, so 1000 clients would take about an hour per round on this
machine; pass ``--model smollm2-135m --mask MASK`` to measure it (then clients/s ~ 1 / (T x step time)).

    python benchmarks/sim_scale.py [--num-clients 10 100 1000] [--out FILE]
    python benchmarks/sim_scale.py --quick      # 10 and 50 clients on a small task, < 1 minute
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="10 and 50 clients, small task (< 1 minute)")
    p.add_argument("--model", default="tiny-llama")
    p.add_argument("--mask", help="mask file (default: computed into --work for tiny-llama)")
    p.add_argument("--task", default="sentiment2")
    p.add_argument("--num-clients", type=int, nargs="+", default=[10, 100, 1000])
    p.add_argument("--clients-per-round", type=int, default=10, help="the sampled scenario's m")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the sampled scenario")
    p.add_argument("--no-all", action="store_true", help="skip the every-client round")
    p.add_argument("--local-steps", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--sync", default="replay", choices=["replay", "vector"])
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default="runs/bench/sim_scale")
    p.add_argument("--out", default="benchmarks/results/sim_scale.json")
    args = p.parse_args(argv)
    if args.quick:
        args.model = "tiny-llama"
        args.num_clients, args.rounds, args.clients_per_round = [10, 50], 2, 5
    if args.mask is None and args.model != "tiny-llama":
        p.error("--mask is required for a model other than tiny-llama")
    return args


def timed_rounds(fed: Any, rounds: list[int], clock: Any = time.process_time) -> dict[str, Any]:
    """Run ``rounds`` the way ``simulator.run_round`` does, timing the parts (sums over the rounds)."""
    from meerkat_core.fed.protocol import ClientReply, RoundInstruction

    server = fed.server
    sync_box = _common.time_client_syncs(fed, clock)  # each client's catch-up, apart from its steps
    acc = {"wall_s": 0.0, "cpu_s": 0.0, "client_cpu_s": 0.0, "sync_cpu_s": 0.0, "server_cpu_s": 0.0,
           "messages_cpu_s": 0.0, "clients": 0, "steps": 0, "bytes_down": 0, "bytes_up": 0, "history_entries": 0}
    for r in rounds:
        w0, c0 = time.perf_counter(), clock()
        instrs = server.plan_round(r)
        replies = []
        for instr in instrs:
            c = clock()
            down = instr.to_bytes()
            received = RoundInstruction.from_bytes(down)
            acc["messages_cpu_s"] += clock() - c
            sync_box[0] = 0.0
            c = clock()
            reply, _ = fed.clients[instr.client].run_round(received, fed.runtime)
            acc["client_cpu_s"] += clock() - c
            acc["sync_cpu_s"] += sync_box[0]
            c = clock()
            up = reply.to_bytes()
            replies.append(ClientReply.from_bytes(up))
            acc["messages_cpu_s"] += clock() - c
            acc["clients"] += 1
            acc["steps"] += len(reply.gs)
            acc["bytes_down"] += len(down)
            acc["bytes_up"] += len(up)
            acc["history_entries"] += len(received.history)
        c = clock()
        server.complete_round(r, instrs, replies)
        acc["server_cpu_s"] += clock() - c
        acc["cpu_s"] += clock() - c0
        acc["wall_s"] += time.perf_counter() - w0
    n = len(rounds)
    out = {**acc, "rounds": n,
           "wall_s_per_round": acc["wall_s"] / n, "cpu_s_per_round": acc["cpu_s"] / n,
           "clients_per_s": acc["clients"] / acc["wall_s"], "client_steps_per_s": acc["steps"] / acc["wall_s"],
           "clients_per_cpu_s": acc["clients"] / acc["cpu_s"],
           "share_client_sync": acc["sync_cpu_s"] / acc["cpu_s"],
           "share_client_steps": (acc["client_cpu_s"] - acc["sync_cpu_s"]) / acc["cpu_s"],
           "share_server": acc["server_cpu_s"] / acc["cpu_s"],
           "bytes_down_per_client": acc["bytes_down"] / acc["clients"],
           "bytes_up_per_client": acc["bytes_up"] / acc["clients"]}
    return out


@_common.keeps_torch_threads
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    import torch

    from meerkat_core.config.train import TrainConfig
    from meerkat_core.fed.simulator import build_federation

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    task = _common.ensure_small_task(work) if args.quick else args.task
    mask = args.mask or str(_common.ensure_mask(work / "tiny.mask.safetensors", args.model))
    results = []
    for n in args.num_clients:
        part = _common.ensure_partition(work / f"partition-{Path(task).stem}-{n}", task, n)
        m = min(n, args.clients_per_round)
        cfg = TrainConfig(model=args.model, mask=mask, partition=str(part), task=task, out=str(work / "unused"),
                          rounds=args.rounds + 1, local_steps=args.local_steps, clients_per_round=m, lr=args.lr,
                          batch_size=args.batch_size, device="cpu", sync=args.sync)
        _common.trim_heap()
        rss0 = _common.rss_bytes()
        t0 = time.perf_counter()
        fed = build_federation(cfg)
        setup_s = time.perf_counter() - t0
        _common.trim_heap()
        row: dict[str, Any] = {"clients": len(fed.clients), "partition_clients": n, "clients_per_round": m,
                               "setup_s": setup_s, "rss_after_setup_bytes": _common.rss_bytes(),
                               "rss_growth_setup_bytes": (_common.rss_bytes() or 0) - (rss0 or 0),
                               "k": fed.provenance["k"], "d": fed.provenance["d"]}
        print(f"  N={n}: setup {setup_s:.1f} s", file=sys.stderr, flush=True)
        row["sampled"] = timed_rounds(fed, list(range(1, args.rounds + 1)))
        print(f"  N={n}: sampled {row['sampled']['clients_per_s']:.1f} clients/s", file=sys.stderr, flush=True)
        if not args.no_all:
            fed.server.policy.clients_per_round = len(fed.clients)
            row["all"] = timed_rounds(fed, [args.rounds + 1])
            print(f"  N={n}: all {row['all']['clients_per_s']:.1f} clients/s", file=sys.stderr, flush=True)
        results.append(row)
        del fed
    base = results[0]
    for row in results[1:]:
        extra = row["clients"] - base["clients"]
        if extra > 0 and row["rss_after_setup_bytes"] and base["rss_after_setup_bytes"]:
            row["rss_per_extra_client_bytes"] = (row["rss_after_setup_bytes"] - base["rss_after_setup_bytes"]) / extra
    res = {
        "machine": _common.machine("cpu"),
        "config": {"model": args.model, "mask": mask, "task": task, "num_clients": args.num_clients,
                   "clients_per_round": args.clients_per_round, "rounds": args.rounds, "all_round": not args.no_all,
                   "local_steps": args.local_steps, "batch_size": args.batch_size, "sync": args.sync,
                   "threads": args.threads, "quick": args.quick},
        "results": results,
    }
    report(res)
    _common.write_json(Path(args.out), res)
    return res


def report(res: dict[str, Any]) -> None:
    c = res["config"]
    r0 = res["results"][0]
    print(f"{c['model']} (k={r0['k']:,}), one model copy, T={c['local_steps']}, batch {c['batch_size']}, "
          f"sync {c['sync']}, {c['threads']} torch thread(s)")
    print(f"{'N':>5} {'scenario':<8} {'clients/rd':>10} {'s/round':>8} {'clients/s':>9} {'/CPU-s':>7} {'steps/s':>8} "
          f"{'sync%':>6} {'steps%':>6} {'server%':>7} {'down B/cl':>9} {'setup s':>7} {'RSS MiB':>8}")
    for row in res["results"]:
        for scen in ("sampled", "all"):
            if scen not in row:
                continue
            s = row[scen]
            print(f"{row['clients']:>5} {scen:<8} {s['clients'] / s['rounds']:>10.0f} {s['wall_s_per_round']:>8.2f} "
                  f"{s['clients_per_s']:>9.1f} {s['clients_per_cpu_s']:>7.1f} {s['client_steps_per_s']:>8.1f} {100 * s['share_client_sync']:>6.1f} "
                  f"{100 * s['share_client_steps']:>6.1f} {100 * s['share_server']:>7.2f} "
                  f"{s['bytes_down_per_client']:>9.0f} {row['setup_s']:>7.1f} {_common.mib(row['rss_after_setup_bytes']):>8}")


if __name__ == "__main__":
    main(sys.argv[1:])
