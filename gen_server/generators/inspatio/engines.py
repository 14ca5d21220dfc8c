"""Engines that run the DiT block steps: eager, CUDA-graphed, torch.compile(+CUDA graphs), TensorRT.

All engines implement streaming.DiTRunner with static shapes: a prefill over 3 or 6 context latent frames and
a denoising step over one 3-frame block against 3 or 6 cached frames, i.e. four shapes per stream.

TensorRT path: the step and prefill graphs (and the TAEHV encoder/decoder chunks) are exported to ONNX with
static shapes (`export_*_onnx`); engines are built from them and cached on disk under a key made of the GPU,
TensorRT version, precision, shapes and checkpoint hash. Only the ONNX graphs are checked here (against torch,
with onnxruntime, in the tests); TensorRT itself cannot be installed on the development machines.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from gen_server.errors import InputError

from .config import StreamConfig
from .dit import CausalWanDiT, KVCache, TextContext, rope_tables
from .streaming import EagerRunner
from .taehv import TAEHV, run_chunk

ENGINES = ("eager", "cudagraph", "compile", "tensorrt")

TENSORRT_INSTALL_HINT = ("TensorRT is not installed: `pip install tensorrt-cu12` (NVIDIA's wheel; needs an NVIDIA "
                         "driver for CUDA 12+), or use --engine compile / eager")


# --------------------------------------------------------------------------------------------------------------
# CUDA graphs (optionally over torch.compile'd kernels)
# --------------------------------------------------------------------------------------------------------------
def compile_blocks(dit: CausalWanDiT, mode: str, backend: str = "inductor") -> None:
    """Regional torch.compile: each layer's pre/post-attention functions, static shapes.

    All layers share one code object, so dynamo compiles each (shape, function) once and reuses it for every
    layer (parameters are graph inputs), keeping compile time to minutes instead of compiling 30 layers.
    Compiles in place; idempotent.
    """
    import torch._dynamo as dynamo

    dynamo.config.cache_size_limit = max(dynamo.config.cache_size_limit, 64)
    for blk in dit.blocks:
        if not getattr(blk, "_compiled", False):
            kw = {"backend": backend, "dynamic": False}
            if backend == "inductor":
                kw["mode"] = mode
            blk.pre_attention = torch.compile(blk.pre_attention, **kw)
            blk.post_attention = torch.compile(blk.post_attention, **kw)
            blk._compiled = True


class CudaGraphRunner(EagerRunner):
    """Captures each of the four static-shape calls once into a CUDA graph and replays it.

    With `compile_mode`, the DiT blocks are first compiled by torch.compile (`compile_blocks`; use a mode
    without cudagraph trees: the CUDA graphs are captured here, around the compiled kernels, the cuDNN
    attention and the in-place KV-cache writes alike).
    """

    def __init__(self, dit: CausalWanDiT, text: TextContext, stream: StreamConfig, batch: int,
                 compile_mode: str | None = None) -> None:
        super().__init__(dit, text, stream, batch)
        if not self.cache.k.is_cuda:
            raise InputError("--engine cudagraph/compile needs a CUDA device")
        self._fn = dit
        if compile_mode is not None:
            compile_blocks(dit, compile_mode)
        self._graphs: dict = {}
        self._pool = torch.cuda.graph_pool_handle()

    def _capture(self, key, inputs: list[torch.Tensor], call):
        static = [x.clone() for x in inputs]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(2):  # warm-up (and compilation) outside capture
                call(*static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool), torch.no_grad():
            out = call(*static)
        self._graphs[key] = (graph, static, out)
        return self._graphs[key]

    def _run(self, key, inputs, call):
        entry = self._graphs.get(key) or self._capture(key, inputs, call)
        graph, static, out = entry
        for s, x in zip(static, inputs):
            s.copy_(x)
        graph.replay()
        return out

    def prefill(self, context36: torch.Tensor) -> None:
        t = torch.zeros(context36.shape[0], device=context36.device)
        self._run(("prefill", tuple(context36.shape)), [context36, t],
                  lambda c, tt: self._fn(c, tt, self.text, self.cache, write_at=0, frame_offset=0, with_head=False))

    def step(self, x36: torch.Tensor, t: torch.Tensor, context_frames: int) -> torch.Tensor:
        w = context_frames * self.tokens_per_frame
        out = self._run(("step", tuple(x36.shape), context_frames), [x36, t.to(x36.device, torch.float32)],
                        lambda x, tt: self._fn(x, tt, self.text, self.cache, write_at=w,
                                               frame_offset=self.stream.block_rope_offset))
        return out.clone()  # the graph pool is shared between the four graphs


# --------------------------------------------------------------------------------------------------------------
# ONNX graphs (static shapes) for TensorRT
# --------------------------------------------------------------------------------------------------------------
class StepGraph(nn.Module):
    """Functional denoising step: (x36, t, context K/V, text K/V) -> flow. No state, no FP64."""

    def __init__(self, dit: CausalWanDiT, stream: StreamConfig, context_frames: int) -> None:
        super().__init__()
        self.dit, self.stream = dit, stream
        h, w = stream.latent_hw
        self.tpf = dit.tokens_per_frame(h, w)
        self.context_tokens = context_frames * self.tpf
        hp, wp = h // dit.cfg.patch_size[1], w // dit.cfg.patch_size[2]
        cos, sin = rope_tables(dit.cfg, stream.latent_frames_per_block, hp, wp, stream.block_rope_offset, "cpu")
        p = next(dit.parameters())
        self.register_buffer("cos", cos.to(p.device), persistent=False)
        self.register_buffer("sin", sin.to(p.device), persistent=False)

    def forward(self, x36, t, ctx_k, ctx_v, text_k, text_v):
        n = self.stream.latent_frames_per_block * self.tpf
        scratch = ctx_k.new_zeros(*ctx_k.shape[:3], n, ctx_k.shape[4])
        cache = KVCache(torch.cat([ctx_k, scratch], dim=3), torch.cat([ctx_v, scratch], dim=3))
        return self.dit(x36, t, TextContext(text_k, text_v), cache, write_at=self.context_tokens,
                        frame_offset=self.stream.block_rope_offset, rope=(self.cos, self.sin))


class PrefillGraph(nn.Module):
    """Functional prefill: (context36, text K/V) -> context K/V (layers, B, heads, tokens, head_dim)."""

    def __init__(self, dit: CausalWanDiT, stream: StreamConfig, context_frames: int) -> None:
        super().__init__()
        self.dit = dit
        h, w = stream.latent_hw
        hp, wp = h // dit.cfg.patch_size[1], w // dit.cfg.patch_size[2]
        self.tokens = context_frames * hp * wp
        cos, sin = rope_tables(dit.cfg, context_frames, hp, wp, 0, "cpu")
        p = next(dit.parameters())
        self.register_buffer("cos", cos.to(p.device), persistent=False)
        self.register_buffer("sin", sin.to(p.device), persistent=False)

    def forward(self, context36, text_k, text_v):
        cfg = self.dit.cfg
        shape = (context36.shape[0], cfg.num_heads, self.tokens, cfg.head_dim)
        # Per-layer base tensors (not views of one stacked tensor) so the tracer keeps the in-place writes.
        cache = KVCache([text_k.new_zeros(shape) for _ in range(cfg.num_layers)],
                        [text_k.new_zeros(shape) for _ in range(cfg.num_layers)])
        t = torch.zeros(context36.shape[0], device=context36.device, dtype=torch.float32)
        self.dit(context36, t, TextContext(text_k, text_v), cache, write_at=0, frame_offset=0, with_head=False,
                 rope=(self.cos, self.sin))
        return torch.stack(cache.k), torch.stack(cache.v)


class TAEChunkGraph(nn.Module):
    """One TAEHV stage over a fixed-length chunk with its MemBlock memories as explicit inputs/outputs."""

    def __init__(self, stage: nn.Sequential) -> None:
        super().__init__()
        self.stage = stage
        from .taehv import MemBlock
        self.mem_index = [i for i, layer in enumerate(stage) if isinstance(layer, MemBlock)]

    def forward(self, x, *memories):
        memory: list = [None] * len(self.stage)
        for i, m in zip(self.mem_index, memories):
            memory[i] = m
        y, new = run_chunk(self.stage, x, memory)
        return (y, *[new[i] for i in self.mem_index])

    def memory_shapes(self, x_shape) -> list[tuple[int, ...]]:
        """Shapes of the memory inputs for a chunk of `x_shape` (from one zero-memory dry run)."""
        p = next(self.stage.parameters())
        with torch.no_grad():
            _, new = run_chunk(self.stage, torch.zeros(x_shape, dtype=p.dtype, device=p.device),
                               [None] * len(self.stage))
        return [tuple(new[i].shape) for i in self.mem_index]


def step_graph_inputs(dit: CausalWanDiT, text: TextContext, stream: StreamConfig, batch: int,
                      context_frames: int, device=None, dtype=None) -> tuple[torch.Tensor, ...]:
    """Example inputs of StepGraph (random latents/cache, t = 937.5)."""
    cfg = dit.cfg
    p = next(dit.parameters())
    device, dtype = device or p.device, dtype or p.dtype
    h, w = stream.latent_hw
    nc = context_frames * dit.tokens_per_frame(h, w)
    kv = (cfg.num_layers, batch, cfg.num_heads, nc, cfg.head_dim)
    return (torch.randn(batch, cfg.in_dim, stream.latent_frames_per_block, h, w, device=device, dtype=dtype),
            torch.full((batch,), 937.5, device=device), torch.randn(kv, device=device, dtype=dtype),
            torch.randn(kv, device=device, dtype=dtype), text.k.to(dtype), text.v.to(dtype))


def _export(module: nn.Module, args: tuple, path: Path, input_names: list[str], output_names: list[str]) -> Path:
    import warnings

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(module, args, str(tmp), dynamo=False, opset_version=17, input_names=input_names,
                          output_names=output_names, do_constant_folding=True)
    tmp.replace(path)
    return path


def export_step_onnx(dit: CausalWanDiT, text: TextContext, stream: StreamConfig, batch: int,
                     context_frames: int, path: str | Path) -> Path:
    """Export the denoising step for (batch, context_frames) with static shapes. Returns the ONNX path."""
    dit.time_dtype = torch.float32  # no FP64 in TensorRT
    try:
        args = step_graph_inputs(dit, text, stream, batch, context_frames)
        return _export(StepGraph(dit, stream, context_frames), args, Path(path),
                       ["x36", "t", "ctx_k", "ctx_v", "text_k", "text_v"], ["flow"])
    finally:
        dit.time_dtype = torch.float64


def export_prefill_onnx(dit: CausalWanDiT, text: TextContext, stream: StreamConfig, batch: int,
                        context_frames: int, path: str | Path) -> Path:
    p = next(dit.parameters())
    h, w = stream.latent_hw
    ctx = torch.randn(batch, dit.cfg.in_dim, context_frames, h, w, device=p.device, dtype=p.dtype)
    return _export(PrefillGraph(dit, stream, context_frames), (ctx, text.k, text.v), Path(path),
                   ["context36", "text_k", "text_v"], ["ctx_k", "ctx_v"])


def export_tae_onnx(tae: TAEHV, stage: str, chunk_shape: tuple[int, ...], path: str | Path) -> Path:
    """Export the TAEHV encoder ('encoder', chunk (N, 12, 3, H, W)) or decoder ('decoder', (N, 3, 16, h, w))."""
    graph = TAEChunkGraph(getattr(tae, stage))
    p = next(tae.parameters())
    x = torch.rand(chunk_shape, device=p.device, dtype=p.dtype)
    mems = [torch.randn(s, device=p.device, dtype=p.dtype) for s in graph.memory_shapes(chunk_shape)]
    names = [f"mem{i}" for i in range(len(mems))]
    return _export(graph, (x, *mems), Path(path), ["x", *names], ["y", *[n + "_out" for n in names]])


# --------------------------------------------------------------------------------------------------------------
# TensorRT engines (built from the ONNX graphs, cached on disk)
# --------------------------------------------------------------------------------------------------------------
def import_tensorrt():
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        raise InputError(TENSORRT_INSTALL_HINT) from None
    return tensorrt


def engine_cache_key(graph: str, shapes: dict, precision: str, checkpoint_hash: str, trt_version: str) -> str:
    """Cache key of a built engine: GPU model + compute capability, TensorRT version, graph, shapes, precision,
    checkpoint content hash."""
    gpu = "cpu"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = f"{props.name}-sm{props.major}{props.minor}"
    blob = json.dumps({"gpu": gpu, "trt": trt_version, "graph": graph, "shapes": shapes, "precision": precision,
                       "checkpoint": checkpoint_hash}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def build_or_load_engine(onnx_path: Path, cache_dir: Path, key: str, precision: str):
    """Deserialise cache_dir/<key>.plan, or build it from ONNX (fp16 or bf16 weights/activations) and save it."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    plan = Path(cache_dir) / f"{key}.plan"
    runtime = trt.Runtime(logger)
    if plan.is_file():
        return runtime.deserialize_cuda_engine(plan.read_bytes())
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise InputError(f"{onnx_path}: TensorRT could not parse the ONNX graph ({errors})")
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.BF16 if precision == "bf16" else trt.BuilderFlag.FP16)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise InputError(f"{onnx_path}: TensorRT engine build failed")
    plan.parent.mkdir(parents=True, exist_ok=True)
    tmp = plan.with_suffix(".tmp")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(plan)
    return runtime.deserialize_cuda_engine(bytes(serialized))


class TensorRTRunner(EagerRunner):
    """Runs prefill and step through TensorRT engines (one per static shape), KV cache kept in torch tensors."""

    def __init__(self, dit: CausalWanDiT, text: TextContext, stream: StreamConfig, batch: int,
                 cache_dir: str | Path, checkpoint_hash: str, precision: str = "bf16") -> None:
        trt = import_tensorrt()
        super().__init__(dit, text, stream, batch)
        self.batch, self.precision, self.cache_dir = batch, precision, Path(cache_dir)
        self.checkpoint_hash, self.trt_version = checkpoint_hash, trt.__version__
        self._contexts: dict = {}

    def _engine(self, graph: str, context_frames: int):
        name = f"{graph}-b{self.batch}-c{context_frames}"
        if name in self._contexts:
            return self._contexts[name]
        h, w = self.stream.latent_hw
        shapes = {"batch": self.batch, "context_frames": context_frames, "latent_hw": [h, w],
                  "cfg": repr(self.dit.cfg)}
        key = engine_cache_key(graph, shapes, self.precision, self.checkpoint_hash, self.trt_version)
        onnx_path = self.cache_dir / f"{key}.onnx"
        if not (self.cache_dir / f"{key}.plan").is_file() and not onnx_path.is_file():
            export = export_step_onnx if graph == "step" else export_prefill_onnx
            export(self.dit, self.text, self.stream, self.batch, context_frames, onnx_path)
        engine = build_or_load_engine(onnx_path, self.cache_dir, key, self.precision)
        self._contexts[name] = (engine, engine.create_execution_context())
        return self._contexts[name]

    def _execute(self, graph: str, context_frames: int, tensors: dict[str, torch.Tensor]) -> None:
        _, ctx = self._engine(graph, context_frames)
        for name, tensor in tensors.items():
            ctx.set_tensor_address(name, tensor.data_ptr())
        if not ctx.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RuntimeError(f"TensorRT {graph} execution failed")

    def prefill(self, context36: torch.Tensor) -> None:
        f = context36.shape[2]
        n = f * self.tokens_per_frame
        k = torch.empty_like(self.cache.k[:, :, :, :n])
        v = torch.empty_like(k)
        self._execute("prefill", f, {"context36": context36.contiguous(), "text_k": self.text.k,
                                     "text_v": self.text.v, "ctx_k": k, "ctx_v": v})
        self.cache.k[:, :, :, :n] = k
        self.cache.v[:, :, :, :n] = v

    def step(self, x36: torch.Tensor, t: torch.Tensor, context_frames: int) -> torch.Tensor:
        n = context_frames * self.tokens_per_frame
        flow = torch.empty(x36.shape[0], 16, *x36.shape[2:], device=x36.device, dtype=x36.dtype)
        self._execute("step", context_frames, {
            "x36": x36.contiguous(), "t": t.float().contiguous(), "ctx_k": self.cache.k[:, :, :, :n].contiguous(),
            "ctx_v": self.cache.v[:, :, :, :n].contiguous(), "text_k": self.text.k, "text_v": self.text.v,
            "flow": flow})
        return flow


def make_runner(engine: str, dit: CausalWanDiT, text: TextContext, stream: StreamConfig, batch: int, *,
                compile_mode: str = "max-autotune-no-cudagraphs", cache_dir: str | Path | None = None,
                checkpoint_hash: str = "", precision: str = "bf16"):
    """Build the runner for --engine eager|cudagraph|compile|tensorrt."""
    if engine == "eager":
        return EagerRunner(dit, text, stream, batch)
    if engine == "cudagraph":
        return CudaGraphRunner(dit, text, stream, batch)
    if engine == "compile":
        return CudaGraphRunner(dit, text, stream, batch, compile_mode=compile_mode)
    if engine == "tensorrt":
        if cache_dir is None:
            raise InputError("--engine tensorrt needs an engine cache directory")
        return TensorRTRunner(dit, text, stream, batch, cache_dir, checkpoint_hash, precision)
    raise InputError(f"--engine {engine!r}: expected one of {', '.join(ENGINES)}")
