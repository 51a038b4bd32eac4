"""Server cost: replay + GradIP per client step, as a fraction of a client's ZO step (issue #7, item 2).

Builds a real federation (``meerkat_core.fed.simulator.build_federation``: one model copy, the mask,
a partition) and runs a few rounds the way the simulator does (messages go through bytes), timing
each side separately in one process:

* client: ``ZOClient.run_round`` (sync, then ``steps`` x ``zo_step`` = two forwards + O(k) work),
  with its sync (replay catch-up: ``apply_history`` of the global updates it missed) timed apart;
* server: ``ZOServer.complete_round`` (for every client step: draw z, advance the virtual path,
  GradIP = g <gbar, z> and the cosine, aggregate into the global state), plus ``plan_round`` and
  the (de)serialization of the messages.

Headline: server ``complete_round`` time per client step / client time per ZO step (target <= 1%).
Then, on the last round's replies, the server's pieces per step (draw z; ``replay`` alone; ``replay``
with the GradIP callback; ``apply_history`` per global update), medians over repetitions.

Times are process CPU time (``time.process_time``) with ``torch.set_num_threads(--threads)`` (default 1),
so ratios hold on a shared, contended CPU; wall times are recorded too. The ratio depends on the batch
(a client step grows with batch x tokens, the server's per-step work only with k).

    python benchmarks/server_cost.py --mask MASK [--model smollm2-135m] [--out FILE]
    python benchmarks/server_cost.py --quick        # tiny-llama, its own mask, < 1 minute
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny-llama with its own mask, few steps (< 1 minute)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--mask", help="mask file (default with --quick: computed into --work)")
    p.add_argument("--task", default="sentiment2")
    p.add_argument("--clients", type=int, default=4, help="clients in the partition")
    p.add_argument("--clients-per-round", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2, help="round 1 has no catch-up; later rounds do")
    p.add_argument("--local-steps", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--reps", type=int, default=None, help="repetitions of the server micro-timings")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1: CPU-time ratios)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--work", default="runs/bench/server_cost", help="where the partition (and quick mask) go")
    p.add_argument("--out", default="benchmarks/results/server_cost.json")
    args = p.parse_args(argv)
    if args.quick:
        args.model = "tiny-llama"
        args.clients, args.clients_per_round, args.rounds, args.local_steps = 4, 4, 3, 3
        args.reps = args.reps or 5
    args.reps = args.reps or 7
    if args.mask is None and not args.quick:
        p.error("--mask is required (make one with `meerkat mask --model MODEL --out FILE`)")
    return args


@_common.keeps_torch_threads
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    import torch

    from meerkat_core.config.train import TrainConfig
    from meerkat_core.fed.protocol import ClientReply, RoundInstruction
    from meerkat_core.fed.simulator import build_federation
    from meerkat_core.fed.state import apply_history
    from meerkat_core.zo import derive_key, replay, rng

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    mask = args.mask or str(_common.ensure_mask(work / "tiny.mask.safetensors", args.model))
    part = _common.ensure_partition(work / f"partition-{args.clients}", args.task, args.clients)
    cfg = TrainConfig(model=args.model, mask=mask, partition=str(part), task=args.task, out=str(work / "unused"),
                      rounds=args.rounds, local_steps=args.local_steps, clients_per_round=args.clients_per_round,
                      lr=args.lr, batch_size=args.batch_size, device=args.device, dtype="auto")
    t0 = time.perf_counter()
    fed = build_federation(cfg)
    build_s = time.perf_counter() - t0
    server = fed.server
    k, d = fed.provenance["k"], fed.provenance["d"]
    clock = time.process_time

    cpu: dict[str, float] = {k_: 0.0 for k_ in ("client_round", "client_sync", "server_complete", "server_plan",
                                                 "serialize", "deserialize")}
    wall = {"client_round": 0.0, "server_complete": 0.0}
    steps_total = 0
    history_entries = 0
    sync_box = _common.time_client_syncs(fed, clock)  # each client's catch-up, apart from its steps

    per_round = []
    last: tuple[list, list, int] | None = None
    for r in range(1, args.rounds + 1):
        c = clock()
        instrs = server.plan_round(r)
        cpu["server_plan"] += clock() - c
        replies = []
        rc = {"client_cpu": 0.0, "sync_cpu": 0.0, "server_cpu": 0.0, "steps": 0}
        for instr in instrs:
            c = clock()
            down = instr.to_bytes()
            cpu["serialize"] += clock() - c
            c = clock()
            received = RoundInstruction.from_bytes(down)
            cpu["deserialize"] += clock() - c
            history_entries += len(received.history)
            sync_box[0] = 0.0
            c, w = clock(), time.perf_counter()
            reply, _ = fed.clients[instr.client].run_round(received, fed.runtime)
            dc, dw = clock() - c, time.perf_counter() - w
            cpu["client_round"] += dc
            cpu["client_sync"] += sync_box[0]
            wall["client_round"] += dw
            rc["client_cpu"] += dc
            rc["sync_cpu"] += sync_box[0]
            c = clock()
            up = reply.to_bytes()
            cpu["serialize"] += clock() - c
            c = clock()
            replies.append(ClientReply.from_bytes(up))
            cpu["deserialize"] += clock() - c
            rc["steps"] += len(reply.gs)
        c, w = clock(), time.perf_counter()
        server.complete_round(r, instrs, replies)
        dc = clock() - c
        cpu["server_complete"] += dc
        wall["server_complete"] += time.perf_counter() - w
        rc["server_cpu"] = dc
        steps_total += rc["steps"]
        per_round.append({"round": r, **rc,
                          "server_fraction": dc / (rc["client_cpu"] - rc["sync_cpu"]) if rc["steps"] else None})
        last = (instrs, replies, r)

    client_step = (cpu["client_round"] - cpu["client_sync"]) / steps_total
    server_step = cpu["server_complete"] / steps_total
    server_all_step = (cpu["server_complete"] + cpu["server_plan"] + cpu["serialize"] + cpu["deserialize"]) / steps_total

    # -- the server's pieces per step, on the last round's replies (x from the start of that round)
    assert last is not None
    instrs, replies, r_last = last
    gbar = server.gbar
    x = server.x.clone()
    reply = max(replies, key=lambda rp: len(rp.gs))
    instr = next(i for i in instrs if i.client == reply.client)
    keys = [derive_key(instr.seed, r_last, instr.client, t) for t in range(len(reply.gs))]
    n = len(keys)

    def cb(t: int, z: torch.Tensor, g: float) -> None:
        if gbar is not None:
            dot = float(torch.dot(gbar, z))
            _ = g * dot, dot / (float(gbar.norm()) * float(z.norm()))

    updates = [h for rr in sorted(server.history) for h in server.history[rr]][: max(n, 1)]
    pieces: dict[str, list[float]] = {"draw_z": [], "replay": [], "replay_gradip": [], "apply_history": []}
    for rep in range(args.reps):
        c = clock()
        for t in range(n):
            rng.normal(keys[t], k, device=x.device)
        pieces["draw_z"].append((clock() - c) / n)
        c = clock()
        replay(x, keys, reply.gs, instr.lr)
        pieces["replay"].append((clock() - c) / n)
        c = clock()
        replay(x, keys, reply.gs, instr.lr, callback=cb)
        pieces["replay_gradip"].append((clock() - c) / n)
        y = x.clone()
        c = clock()
        apply_history(y, updates)
        pieces["apply_history"].append((clock() - c) / max(len(updates), 1))
    piece_s = {name: statistics.median(v) for name, v in pieces.items()}

    res: dict[str, Any] = {
        "machine": _common.machine(args.device),
        "config": {"model": args.model, "mask": mask, "k": k, "d": d, "task": args.task, "clients": args.clients,
                   "clients_per_round": args.clients_per_round, "rounds": args.rounds,
                   "local_steps": args.local_steps, "batch_size": args.batch_size, "threads": args.threads,
                   "reps": args.reps, "quick": args.quick, "clock": "process_time"},
        "setup_s": build_s,
        "client_steps": steps_total,
        "history_entries_replayed_by_clients": history_entries,
        "cpu_s": cpu,
        "wall_s": wall,
        "per_step_cpu_s": {
            "client_zo_step": client_step,
            "server_complete_round": server_step,
            "server_all": server_all_step,
            "client_catch_up_per_history_entry": (cpu["client_sync"] / history_entries) if history_entries else None,
        },
        "server_pieces_per_step_cpu_s": piece_s,
        "per_round": per_round,
        "fraction_server_complete_round": server_step / client_step,
        "fraction_server_all": server_all_step / client_step,
        "fraction_replay_gradip_piece": piece_s["replay_gradip"] / client_step,
        "fraction_client_catch_up_per_entry": piece_s["apply_history"] / client_step,
        "target_fraction": 0.01,
    }
    res["meets_target"] = res["fraction_server_complete_round"] <= 0.01
    res["machine"]["loadavg_end"] = __import__("os").getloadavg()
    report(res)
    _common.write_json(Path(args.out), res)
    return res


def report(res: dict[str, Any]) -> None:
    c, m = res["config"], res["machine"]
    print(f"{c['model']}: k={c['k']:,} d={c['d']:,}, {c['rounds']} rounds x {c['clients_per_round']} clients x "
          f"{c['local_steps']} steps, batch {c['batch_size']}, {c['threads']} torch thread(s), "
          f"load {m['loadavg_start'][0]:.1f} ({res['client_steps']} client steps, process CPU time)")
    ps, pc = res["per_step_cpu_s"], res["server_pieces_per_step_cpu_s"]
    cs = ps["client_zo_step"]
    rows = [
        ("client ZO step (2 forwards + O(k))", cs),
        ("server complete_round per client step", ps["server_complete_round"]),
        ("  + plan_round and (de)serialization", ps["server_all"]),
        ("  piece: draw z (k normals)", pc["draw_z"]),
        ("  piece: replay (virtual path)", pc["replay"]),
        ("  piece: replay + GradIP", pc["replay_gradip"]),
        ("client catch-up per global update", pc["apply_history"]),
    ]
    print(f"{'per client step':44s} {'CPU ms':>10s} {'/ client step':>14s}")
    for name, v in rows:
        print(f"{name:44s} {v * 1e3:10.3f} {v / cs:14.5f}")
    print(f"server cost / client step: {res['fraction_server_complete_round'] * 100:.3f}% "
          f"(target <= 1%: {'met' if res['meets_target'] else 'missed'}); with planning and messages "
          f"{res['fraction_server_all'] * 100:.3f}%")


if __name__ == "__main__":
    main(sys.argv[1:])
