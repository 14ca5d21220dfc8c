"""Benchmark the InSpatio-compatible generator at full size (random weights: speed does not depend on values).

Prints and writes JSON: per engine (eager / cudagraph / compile) and batch (1 = mono, 2 = stereo pair batched):
ms per steady 12-frame block (prefill over 6 context latent frames + 4 denoising steps), frames/s, peak GPU
memory; TAEHV encode/decode ms; centre-view depth reprojection ms; and end-to-end block rates
(DiT + TAE encode of the 12 condition renders + TAE decode; geometric renders excluded).

    python -m gen_server.benchmarks.dit_bench --out bench.json            # on a GPU box
    python -m gen_server.benchmarks.dit_bench --tiny --device cpu         # smoke test of the script
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time

import torch

from gen_server.benchmarks.machine import describe, machine_info
from gen_server.generators.inspatio.config import (DiTConfig, StreamConfig, TAEHVConfig, tiny_dit_config,
                                                   tiny_stream_config, tiny_taehv_config)
from gen_server.generators.inspatio.dit import CausalWanDiT
from gen_server.generators.inspatio.engines import make_runner
from gen_server.generators.inspatio.stereo import reproject_views
from gen_server.generators.inspatio.streaming import BlockStreamer
from gen_server.generators.inspatio.taehv import TAEHV, TAEHVStream


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device, repeat: int) -> float:
    """Mean ms of fn() over `repeat` runs after one warm-up."""
    fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) * 1e3 / repeat


def attention_backend(name: str):
    if name == "default":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
             SDPBackend.MATH]
    return sdpa_kernel(order, set_priority=True)


def bench_dit(dit, cfg: DiTConfig, stream: StreamConfig, engine: str, batch: int, blocks: int, device,
              dtype, compile_mode: str, profile_path: str | None = None) -> dict:
    h, w = stream.latent_hw
    gen = torch.Generator(device=device).manual_seed(0)
    text = dit.text_context(torch.randn(1, cfg.text_len, cfg.text_dim, device=device, dtype=dtype,
                                        generator=gen).expand(batch, -1, -1))
    torch.cuda.reset_peak_memory_stats() if torch.device(device).type == "cuda" else None
    runner = make_runner(engine, dit, text, stream, batch, compile_mode=compile_mode)
    streamer = BlockStreamer(runner, stream)

    def block():
        ref = torch.randn(batch, 3, 16, h, w, device=device, dtype=dtype, generator=gen)
        render = torch.randn(batch, 3, 16, h, w, device=device, dtype=dtype, generator=gen)
        mask = torch.rand(batch, 3, 4, h, w, device=device, generator=gen).to(dtype)
        return streamer.denoise_block(ref, render, mask)

    t0 = time.perf_counter()
    block()  # block 0: 3 context frames (first call also captures/compiles)
    _sync(device)
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = block()  # first steady-state block (captures/compiles the 6-frame shapes)
    _sync(device)
    warm_s = time.perf_counter() - t0
    ms = _timed(block, device, blocks)
    res = {"engine": engine, "batch": batch, "block_ms": round(ms, 2),
           "blocks_per_s": round(1e3 / ms, 3), "frames_per_s_per_view": round(12e3 / ms, 2),
           "first_block_s": round(first_s, 2), "first_steady_block_s": round(warm_s, 2),
           "finite": bool(torch.isfinite(out).all())}
    # Breakdown of one steady block: prefill and one step.
    ctx = torch.randn(batch, 36, 6, h, w, device=device, dtype=dtype, generator=gen)
    x36 = torch.randn(batch, 36, 3, h, w, device=device, dtype=dtype, generator=gen)
    tt = torch.full((batch,), 937.5, device=device)
    res["prefill_ms"] = round(_timed(lambda: runner.prefill(ctx), device, 3), 2)
    res["step_ms"] = round(_timed(lambda: runner.step(x36, tt, 6), device, 3), 2)
    # Parity probe: the same prefill + step on fixed inputs, compared across engines by the caller.
    pg = torch.Generator(device=device).manual_seed(123)
    runner.prefill(torch.randn(batch, 36, 6, h, w, device=device, dtype=dtype, generator=pg))
    probe = runner.step(torch.randn(batch, 36, 3, h, w, device=device, dtype=dtype, generator=pg), tt, 6)
    res["_probe"] = probe.float().cpu()
    if profile_path:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            block()
            _sync(device)
        with open(profile_path, "w") as fh:
            fh.write(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=40, max_name_column_width=90))
    if torch.device(device).type == "cuda":
        res["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    del runner, streamer
    return res


def bench_tae(tcfg: TAEHVConfig, stream: StreamConfig, batch: int, device) -> dict:
    dtype = torch.float16 if torch.device(device).type == "cuda" else torch.float32
    tae = TAEHV(tcfg).to(device, dtype).eval()
    s = TAEHVStream(tae)
    h, w = stream.latent_hw
    frames = torch.rand(batch, 12, 3, stream.height, stream.width, device=device, dtype=dtype)
    lat = torch.randn(batch, 3, 16, h, w, device=device, dtype=dtype)
    with torch.no_grad():
        return {"batch": batch, "encode12_ms": round(_timed(lambda: s.encode(frames), device, 5), 2),
                "decode3_ms": round(_timed(lambda: s.decode(lat), device, 5), 2)}


def bench_reprojection(stream: StreamConfig, device) -> dict:
    hgt, wid = stream.height, stream.width
    color = torch.randint(0, 255, (12, hgt, wid, 3), dtype=torch.uint8, device=device)
    depth = 1.0 + torch.rand(12, hgt, wid, device=device) * 4
    k = torch.tensor([[500.0, 0, wid / 2], [0, 500.0, hgt / 2], [0, 0, 1]], device=device)
    rel = torch.eye(4, device=device).repeat(2, 1, 1)
    rel[0, 0, 3], rel[1, 0, 3] = 0.032, -0.032
    ms = _timed(lambda: reproject_views(color, depth, k, rel, k.expand(2, 3, 3)), device, 5)
    return {"frames": 12, "eyes": 2, "ms": round(ms, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gen_server.benchmarks.dit_bench")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--engines", default="eager,cudagraph,compile")
    ap.add_argument("--batches", default="1,2")
    ap.add_argument("--blocks", type=int, default=4, help="timed steady-state blocks per configuration")
    ap.add_argument("--compile-mode", default="max-autotune-no-cudagraphs")
    ap.add_argument("--attention", default="cudnn", choices=["cudnn", "default"])
    ap.add_argument("--tiny", action="store_true", help="tiny config (script smoke test)")
    ap.add_argument("--profile", default=None, help="write kernel tables of one mono block (eager, compile) to PATH.<engine>.txt")
    ap.add_argument("--out", default=None, help="write results JSON here (rewritten after each result)")
    args = ap.parse_args(argv)
    device = args.device
    cfg, stream, tcfg = ((tiny_dit_config(), tiny_stream_config(), tiny_taehv_config()) if args.tiny
                         else (DiTConfig(), StreamConfig(), TAEHVConfig()))
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    info = machine_info(device)
    results: dict = {"machine": info, "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
                     "attention": args.attention, "dit": [], "tae": [], "reprojection": None}
    print(f"machine: {describe(info)}", flush=True)

    def dump():
        if args.out:
            with open(args.out, "w") as fh:
                json.dump(results, fh, indent=1)

    torch.manual_seed(0)
    with torch.device(device):
        dit = CausalWanDiT(cfg)
    dit = dit.to(dtype).eval().requires_grad_(False)
    params = sum(p.numel() for p in dit.parameters())
    results["params"] = params
    print(f"DiT {params / 1e9:.3f} B params, {stream.height}x{stream.width}, dtype {dtype}", flush=True)
    for b in (int(x) for x in args.batches.split(",")):
        results["tae"].append(bench_tae(tcfg, stream, b, device))
        print("tae", results["tae"][-1], flush=True)
    results["reprojection"] = bench_reprojection(stream, device)
    print("reprojection", results["reprojection"], flush=True)
    dump()
    probes: dict = {}
    with attention_backend(args.attention), torch.no_grad():
        for engine in args.engines.split(","):
            for b in (int(x) for x in args.batches.split(",")):
                try:
                    prof = (f"{args.profile}.{engine}.txt" if args.profile and b == 1 and engine in ("eager", "compile")
                            else None)
                    r = bench_dit(dit, cfg, stream, engine, b, args.blocks, device, dtype, args.compile_mode, prof)
                except Exception as exc:  # report and go on: one engine failing must not hide the others
                    r = {"engine": engine, "batch": b, "error": f"{type(exc).__name__}: {exc}"[:500]}
                probe = r.pop("_probe", None)
                if probe is not None:
                    ref = probes.setdefault(b, probe)
                    r["max_abs_diff_vs_first_engine"] = round(float((probe - ref).abs().max()), 5)
                    r["probe_max_abs"] = round(float(ref.abs().max()), 3)
                results["dit"].append(r)
                print("dit", r, flush=True)
                dump()
                if torch.device(device).type == "cuda":
                    torch.cuda.empty_cache()
    results["summary"] = summarize(results)
    dump()
    for line in results["summary"]:
        print(line)
    return 0


def summarize(results: dict) -> list[str]:
    """End-to-end rates: mono, stereo batched, stereo as centre + reprojection (DiT + TAE [+ reprojection])."""
    tae = {t["batch"]: t["encode12_ms"] + t["decode3_ms"] for t in results["tae"]}
    rep = results["reprojection"]["ms"]
    lines = []
    for r in results["dit"]:
        if "error" in r or r["batch"] not in tae:
            continue
        total = r["block_ms"] + tae[r["batch"]]
        name = "mono" if r["batch"] == 1 else f"stereo batched (B={r['batch']})"
        lines.append(f"{r['engine']:>9} {name}: DiT {r['block_ms']:.1f} ms + TAE {tae[r['batch']]:.1f} ms per block"
                     f" -> {12e3 / total:.1f} {'frames' if r['batch'] == 1 else 'pairs'}/s, peak {r.get('peak_gib')} GiB")
        if r["batch"] == 1:
            lines.append(f"{r['engine']:>9} stereo centre+reproject: +{rep:.1f} ms -> {12e3 / (total + rep):.1f} pairs/s")
    return lines


if __name__ == "__main__":
    sys.exit(main())
