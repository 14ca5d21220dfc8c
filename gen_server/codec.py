"""Frame encoding for the stream: per-eye colour as JPEG, depth as 16-bit quantised inverse depth.

Colour: for CUDA views nvJPEG through :mod:`gen_server.nvjpeg` (4:2:0 like the CPU path), or
``torchvision.io.encode_jpeg`` (4:4:4 only) where that binding cannot load; otherwise simplejpeg
(libjpeg-turbo) on the CPU, eyes in parallel threads (it releases the GIL). Depth compression starts
first, on pool threads, so it runs while the colour encodes.

Depth: reduced by an integer factor keeping the *nearest* valid surface of each block (so
reprojection never pushes a foreground edge behind the background), quantised as inverse depth
(precision where it matters: close up) and compressed over split high/low byte planes, in bands of rows
compressed in parallel threads: ``inv16-zstd`` (the default; zstandard level 1 is about 4x faster than
zlib level 1 for 15 % more bytes, and decodes 8x faster) or ``inv16-zlib``.

Imports numpy only at module level; torch/torchvision are imported lazily for tensor inputs, so the
client side (``xr_client.frame_decode``) can use the dequantisation below without torch.
"""

from __future__ import annotations

import dataclasses
import fractions
import functools
import os
import struct
import threading
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import simplejpeg
import zstandard

from gen_server.protocol import DEPTH_CODECS

Q_MAX = 65535  # q = 0 is "no surface"; 1..65535 span 1/far..1/near
GPU_JPEG_ENCODERS = ("auto", "nvjpeg", "torchvision")  # CodecConfig.gpu_jpeg


@dataclass
class CodecConfig:
    """Stream encoding settings. ``depth_near``/``depth_far`` (metres) bound the quantised range."""

    color_codec: str = "jpeg"  # "jpeg" | "raw"
    jpeg_quality: int = 85
    jpeg_subsampling: str = "420"  # chroma: "420" (half each way; what the CPU path encodes) | "422" | "444"
    depth_codec: str = "inv16-zstd"  # "inv16-zstd" | "inv16-zlib" | "inv16"
    depth_downscale: int = 0  # 0 = auto: the smallest power of two giving depth <= max_depth_width wide
    max_depth_width: int = 400
    depth_near: float = 0.05
    depth_far: float = 500.0
    zlib_level: int = 1
    zstd_level: int = 1
    # Rows per compressed band, bands compressing in parallel threads; 0 = one band per eye. On the H100
    # host one band per eye measured fastest (1.9 ms to encode a 2x1440x1600 pair against 2.7 ms with
    # 64-row bands, whose many small jobs contend for the GIL with the colour encode).
    depth_band_rows: int = 0
    cuda_graphs: bool = True  # CUDA depth codes as a captured graph per shape (fewer launches, less host time)
    # CUDA colour: "nvjpeg" (the ctypes binding, gen_server/nvjpeg.py: jpeg_subsampling, no permute copies),
    # "torchvision" (torchvision.io.encode_jpeg: always 4:4:4), "auto" = the first that loads. Without CUDA,
    # colour goes to simplejpeg on the CPU.
    gpu_jpeg: str = "auto"


@dataclass
class EncodedViews:
    """What goes into a ``frame`` message: per-eye payloads plus the parameters to decode them."""

    color: list[bytes]
    depth: list[bytes]
    width: int
    height: int
    depth_width: int
    depth_height: int
    depth_near: float
    depth_far: float
    color_codec: str
    depth_codec: str
    encode_ns: int
    backend: str
    keyframe: bool = True  # False only for an h264 frame that needs the ones before it

    def select(self, views: slice) -> "EncodedViews":
        """The same encoding restricted to some views (one client's eyes out of a batch)."""
        return dataclasses.replace(self, color=self.color[views], depth=self.depth[views])


# ----------------------------------------------------------------------------------------------------
# Inverse-depth quantisation (numpy; shared with the client's decoder)
# ----------------------------------------------------------------------------------------------------
def _quant_constants(near: float, far: float) -> tuple[np.float32, np.float32, np.float32, np.float32]:
    """float32 (near, far, 1/far, (Q_MAX - 1) / (1/near - 1/far)): one multiply per code, so numpy and
    torch on any device compute bit-identical codes (a division by a scalar becomes a multiply by its
    reciprocal inside torch's CUDA kernels, and would not)."""
    return (np.float32(near), np.float32(far), np.float32(1.0 / far),
            np.float32((Q_MAX - 1) / (1.0 / near - 1.0 / far)))


def inverse_depth(depth: np.ndarray, near: float, far: float) -> np.ndarray:
    """z-depth (..., H, W) metres -> float32 1/z with z clamped to [near, far]; 0 where depth is not > 0
    or not finite. The largest inverse depth of a block is its nearest surface."""
    depth = np.asarray(depth, np.float32)
    valid = np.isfinite(depth) & (depth > 0)
    near32, far32, _, _ = _quant_constants(near, far)
    inv = np.float32(1.0) / np.clip(np.where(valid, depth, far32), near32, far32)
    return np.where(valid, inv, np.float32(0))


def codes_from_inverse_depth(inv: np.ndarray, near: float, far: float) -> np.ndarray:
    """:func:`inverse_depth` values -> uint16 codes (0 stays 0: no surface)."""
    _, _, inv_far, k = _quant_constants(near, far)
    q = np.minimum(np.float32(1.0) + np.rint((inv - inv_far) * k), np.float32(Q_MAX))
    return np.where(inv > 0, q, np.float32(0)).astype(np.uint16)


def quantize_inverse_depth(depth: np.ndarray, near: float, far: float) -> np.ndarray:
    """z-depth (..., H, W) metres -> uint16; 0 where depth is not > 0 or not finite.

    Convention: q = 1 + round((1/z - 1/far) / (1/near - 1/far) * (Q_MAX - 1)), z clamped to [near, far];
    the rounding error in z is at most z**2 * (1/near - 1/far) / (2 * (Q_MAX - 1)).
    """
    return codes_from_inverse_depth(inverse_depth(depth, near, far), near, far)


@functools.lru_cache(maxsize=16)
def inverse_depth_lut(near: float, far: float) -> np.ndarray:
    """(65536,) float32: z-depth metres for every code q (0 -> 0, "no surface"); read-only."""
    q = np.arange(Q_MAX + 1, dtype=np.float64)
    inv = 1.0 / far + (q - 1.0) / (Q_MAX - 1) * (1.0 / near - 1.0 / far)
    lut = np.where(q > 0, 1.0 / inv, 0.0).astype(np.float32)
    lut.flags.writeable = False
    return lut


def dequantize_inverse_depth(q: np.ndarray, near: float, far: float) -> np.ndarray:
    """uint16 from :func:`quantize_inverse_depth` -> z-depth float32 metres, 0 where q == 0 (a table
    lookup: one gather per pixel)."""
    return inverse_depth_lut(float(near), float(far))[np.asarray(q, np.uint16)]


def depth_codes_torch(depth, valid, near: float, far: float, factor: int, recip_scale=None):
    """Torch twin of ``quantize_inverse_depth(downsample_depth(depth * (1/scale), factor))`` with the
    same float32 operations, hence the same codes: (B, H, W) depth -> (B, h, w) int32 codes, run on the
    renderer's device so only the codes cross to the host. ``recip_scale``: (B,) float32 tensor of
    float32 reciprocals of the depth scales, on the device (None: all 1)."""
    import torch  # noqa: PLC0415

    near32, far32, inv_far, k = (float(c) for c in _quant_constants(near, far))
    d = depth.float()
    if recip_scale is not None:
        d = d * recip_scale[:, None, None]
    ok = (d > 0) & (d < float("inf"))  # NaN fails both
    if valid is not None:
        ok &= valid.bool()
    inv = torch.where(ok, 1.0 / d.clamp(near32, far32), 0.0)
    if factor > 1:  # the nearest surface of a block has the largest inverse depth
        inv = torch.nn.functional.max_pool2d(inv[:, None], factor, factor, ceil_mode=True)[:, 0]
    q = torch.clamp_max(1.0 + torch.round((inv - inv_far) * k), float(Q_MAX))
    return torch.where(inv > 0, q, 0.0).to(torch.int32)


class DepthPlanesGraph:
    """:func:`depth_codes_torch` + :func:`byte_planes_torch` for one input shape on CUDA, captured once
    as a CUDA graph over static input buffers (a dozen small launches -> two copies and a replay). The
    planes come back through a pinned host buffer (0.63 against 0.85 ms for 8 views of 1440x1600 on the
    H100 host through pageable memory), so each call's result is valid until the next call."""

    def __init__(self, shape: tuple[int, int, int], device, near: float, far: float, factor: int):
        import torch  # noqa: PLC0415

        self.depth = torch.zeros(shape, dtype=torch.float32, device=device)
        self.valid = torch.ones(shape, dtype=torch.bool, device=device)
        self.recip = torch.ones(shape[0], dtype=torch.float32, device=device)
        args = (near, far, factor)
        byte_planes_torch(depth_codes_torch(self.depth, self.valid, *args, self.recip))  # warm-up
        torch.cuda.synchronize(device)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):  # other threads may use CUDA meanwhile
            self.planes = byte_planes_torch(depth_codes_torch(self.depth, self.valid, *args, self.recip))
        self.host = torch.empty(self.planes.shape, dtype=torch.uint8, pin_memory=True)

    def __call__(self, depth, valid, recip: np.ndarray) -> np.ndarray:
        import torch  # noqa: PLC0415

        self.depth.copy_(depth)
        if valid is None:
            self.valid.fill_(True)
        else:
            self.valid.copy_(valid)
        self.recip.copy_(torch.from_numpy(recip))
        self.graph.replay()
        self.host.copy_(self.planes, non_blocking=True)
        torch.cuda.current_stream(self.planes.device).synchronize()
        return self.host.numpy()


def _view_scales(depth_scale, views: int) -> np.ndarray:
    """One depth scale or one per view -> (views,) float32."""
    return np.broadcast_to(np.asarray(depth_scale, np.float32), (views,))


def _recip_tensor(scales: np.ndarray, device):
    """(B,) depth scales -> float32 reciprocals on ``device``, or None when all are 1 (nothing to multiply)."""
    import torch  # noqa: PLC0415

    recip = np.float32(1.0) / np.asarray(scales, np.float32)
    return None if np.all(recip == 1) else torch.from_numpy(recip).to(device)


def byte_planes_torch(q):
    """Torch twin of :func:`byte_planes` for int32 codes: (B, h, w) -> (B, 2, h, w) uint8."""
    import torch  # noqa: PLC0415

    return torch.stack([q >> 8, q & 0xFF], 1).to(torch.uint8)


def depth_error_bound(depth: np.ndarray, near: float, far: float) -> np.ndarray:
    """Largest |dequantised - clamped depth| the quantisation allows at ``depth`` (metres)."""
    z = np.clip(np.asarray(depth, np.float64), near, far)
    step = (1.0 / near - 1.0 / far) / (Q_MAX - 1)
    # Half a step in inverse depth, mapped through z = 1/inv at the far side of the interval.
    return 1.0 / np.maximum(1.0 / z - 0.5 * step, 1e-12) - z


_BAND_TABLE = struct.Struct("<I")  # inv16-zstd: band count, then each band's compressed size
_ZSTD = threading.local()  # one compression context per thread (a context is not thread-safe)


def byte_planes(q: np.ndarray) -> np.ndarray:
    """uint16 codes (..., H, W) -> uint8 (..., 2, H, W): high bytes, then low bytes. The high plane is
    smooth and compresses far better than interleaved bytes."""
    q = np.asarray(q, np.uint16)
    return np.stack([(q >> 8).astype(np.uint8), (q & 0xFF).astype(np.uint8)], axis=-3)


def compress_band(planes: np.ndarray, codec: str, level: int = 1) -> bytes:
    """One band of rows as (2, rows, W) uint8 planes -> a zlib stream / zstd frame (its content size in
    the header). Only the compressor runs here, which releases the GIL: bands compress in parallel."""
    planes = np.ascontiguousarray(planes, np.uint8)
    if codec == "inv16-zlib":
        return zlib.compress(planes, level)
    if codec == "inv16-zstd":
        compressors = _ZSTD.__dict__.setdefault("by_level", {})
        if level not in compressors:
            compressors[level] = zstandard.ZstdCompressor(level=level)
        return compressors[level].compress(planes)
    raise ValueError(f"{codec}: not a banded depth codec")


def join_bands(bands: list[bytes], codec: str) -> bytes:
    """Per-band outputs of :func:`compress_band`, top to bottom -> one eye's payload."""
    if codec == "inv16-zstd":
        table = struct.pack(f"<{1 + len(bands)}I", len(bands), *map(len, bands))
        return b"".join([table, *bands])
    if codec == "inv16-zlib":
        return b"".join(bands)  # zlib streams back to back
    raise ValueError(f"{codec}: not a banded depth codec")


def pack_depth(q: np.ndarray, codec: str, level: int = 1, band_rows: int = 0) -> bytes:
    """uint16 (H, W) -> one eye's payload, bands compressed one after another (the encoder runs them in
    parallel). ``inv16``: little-endian; ``inv16-zlib``: zlib streams of (high bytes, low bytes) of each
    band, back to back; ``inv16-zstd``: a band table (u32 count, u32 size of each band, little-endian),
    then one zstd frame of (high bytes, low bytes) per band."""
    if codec == "inv16":
        return np.ascontiguousarray(q, dtype="<u2").tobytes()
    if codec not in ("inv16-zlib", "inv16-zstd"):
        raise ValueError(f"unknown depth codec {codec!r}")
    planes = byte_planes(q)
    return join_bands([compress_band(planes[:, band], codec, level) for band in depth_bands(q.shape[0], band_rows)], codec)


def depth_bands(height: int, band_rows: int) -> list[slice]:
    """Row bands for a banded ``inv16-zstd`` / ``inv16-zlib`` payload: ``band_rows`` rows each, the last one shorter
    (``band_rows`` 0: one band)."""
    step = band_rows if band_rows > 0 else max(height, 1)
    return [slice(r, min(r + step, height)) for r in range(0, max(height, 1), step)]


def unpack_depth(data, codec: str, width: int, height: int) -> np.ndarray:
    """Payload bytes -> uint16 (height, width); raises ValueError on a size mismatch or bad stream."""
    n = width * height
    if codec == "inv16":
        raw = bytes(data)
        if len(raw) != 2 * n:
            raise ValueError(f"depth payload: {len(raw)} bytes, expected {2 * n}")
        return np.frombuffer(raw, dtype="<u2").reshape(height, width).astype(np.uint16)
    if codec == "inv16-zstd":
        return _unpack_zstd(bytes(data), width, height)
    if codec == "inv16-zlib":
        out = np.empty((height, width), np.uint16)
        rest, row = bytes(data), 0
        while True:  # one zlib stream per band of rows, back to back
            d = zlib.decompressobj()
            room = 2 * (height - row) * width
            try:
                raw = d.decompress(rest, room + 1)  # bounded: a zip bomb cannot grow past the declared size
            except zlib.error as e:
                raise ValueError(f"depth payload: band at row {row}: {e}") from None
            if d.unconsumed_tail or not d.eof or len(raw) > room or len(raw) % (2 * width):
                raise ValueError(f"depth payload: band at row {row} inflates to {len(raw)}+ bytes, "
                                 f"not whole rows of {width} within {room}")
            rows = _store_band(out, row, raw)
            row, rest = row + rows, d.unused_data
            if not rest or rows == 0:
                break
        if row != height or rest:
            raise ValueError(f"depth payload: {row} of {height} rows" + (", trailing bytes" if rest else ""))
        return out
    raise ValueError(f"unknown depth codec {codec!r}")


def _store_band(out: np.ndarray, row: int, raw: bytes) -> int:
    """A band's inflated (high plane, low plane) bytes -> codes in ``out`` from ``row`` on; returns its
    row count (the caller checked the size is whole rows that fit)."""
    width = out.shape[1]
    rows = len(raw) // (2 * width)
    planes = np.frombuffer(raw, np.uint8).reshape(2, rows, width)
    out[row:row + rows] = (planes[0].astype(np.uint16) << 8) | planes[1]
    return rows


def _unpack_zstd(data: bytes, width: int, height: int) -> np.ndarray:
    if len(data) < 4:
        raise ValueError("depth payload: no band table")
    (n,) = _BAND_TABLE.unpack_from(data)
    if not 1 <= n <= max(height, 1) or len(data) < 4 * (n + 1):
        raise ValueError(f"depth payload: band table of {n} bands for {height} rows in {len(data)} bytes")
    sizes = np.frombuffer(data, "<u4", n, 4).astype(np.int64)
    offsets = 4 * (n + 1) + np.r_[0, np.cumsum(sizes)]
    if offsets[-1] != len(data):
        raise ValueError(f"depth payload: bands add up to {offsets[-1]} bytes, payload has {len(data)}")
    out = np.empty((height, width), np.uint16)
    row, dctx = 0, zstandard.ZstdDecompressor()
    for start, stop in zip(offsets[:-1], offsets[1:]):
        frame = data[start:stop]
        try:  # the declared size sizes the output (and bounds it: no bombs); zstd checks it on decode
            declared = zstandard.frame_content_size(frame)
            room = 2 * (height - row) * width
            if declared < 0 or declared > room or declared % (2 * width):
                raise ValueError(f"band at row {row} declares {declared} bytes, not whole rows of {width} within {room}")
            raw = dctx.decompress(frame)
        except zstandard.ZstdError as e:
            raise ValueError(f"depth payload: band at row {row}: {e}") from None
        if len(raw) != declared:
            raise ValueError(f"depth payload: band at row {row} inflates to {len(raw)} bytes, declared {declared}")
        row += _store_band(out, row, raw)
    if row != height:
        raise ValueError(f"depth payload: {row} of {height} rows")
    return out


def downsample_depth(depth: np.ndarray, factor: int) -> np.ndarray:
    """(..., H, W) depth (0 / non-finite = invalid) -> (..., ceil(H/f), ceil(W/f)), nearest valid per block.

    Convention: block (i, j) covers source pixels [i*f, (i+1)*f) x [j*f, (j+1)*f); edge blocks are
    padded with invalid pixels.
    """
    depth = np.asarray(depth, np.float32)
    if factor == 1:
        return np.where(np.isfinite(depth) & (depth > 0), depth, 0).astype(np.float32)
    *batch, h, w = depth.shape
    hp, wp = -(-h // factor) * factor, -(-w // factor) * factor
    padded = np.full((*batch, hp, wp), np.inf, np.float32)
    padded[..., :h, :w] = np.where(np.isfinite(depth) & (depth > 0), depth, np.inf)
    blocks = padded.reshape(*batch, hp // factor, factor, wp // factor, factor).min(axis=(-3, -1))
    return np.where(np.isfinite(blocks), blocks, 0).astype(np.float32)


# ----------------------------------------------------------------------------------------------------
# Encoder
# ----------------------------------------------------------------------------------------------------
def _torchvision_jpeg():
    try:
        from torchvision.io import encode_jpeg  # noqa: PLC0415 - optional GPU path
    except Exception:  # noqa: BLE001 - torchvision missing or broken: CPU path
        return None
    return encode_jpeg


class FrameEncoder:
    """Encodes a batch of eye views; reuse one per server (it keeps a thread pool)."""

    def __init__(self, config: CodecConfig | None = None):
        self.config = config or CodecConfig()
        if self.config.color_codec not in ("jpeg", "raw", "h264"):
            raise ValueError(f"unknown colour codec {self.config.color_codec!r}")
        if self.config.depth_codec not in DEPTH_CODECS:
            raise ValueError(f"unknown depth codec {self.config.depth_codec!r}")
        # Depth bands and CPU JPEGs run here; zlib and libjpeg-turbo release the GIL.
        self._pool = ThreadPoolExecutor(max_workers=max(4, min(16, os.cpu_count() or 1)), thread_name_prefix="encode")
        if self.config.gpu_jpeg not in GPU_JPEG_ENCODERS:
            raise ValueError(f"unknown GPU JPEG encoder {self.config.gpu_jpeg!r}")
        if self.config.jpeg_subsampling not in ("420", "422", "444"):
            raise ValueError(f"unknown JPEG chroma subsampling {self.config.jpeg_subsampling!r}")
        self._gpu_jpeg = None  # torchvision's encoder, resolved on the first CUDA tensor it serves
        self._nvjpeg: dict = {}  # device -> NvJpegEncoder, or None where the library did not load
        self._depth_graphs: dict = {}  # (shape, device, factor) -> DepthPlanesGraph, by last use
        self._depth_graph_failed: set = set()

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        for nvjpeg in self._nvjpeg.values():
            if nvjpeg is not None:
                nvjpeg.close()

    def encode(self, color, depth, valid=None, depth_scale: float | list[float] = 1.0,
               h264: "H264StreamEncoder | None" = None) -> EncodedViews:
        """``color`` (B, H, W, 3) uint8, ``depth`` (B, H, W) float32 metres, ``valid`` (B, H, W) bool;
        numpy arrays or torch tensors (CUDA colour goes to nvJPEG, and depth is reduced and quantised on
        the GPU). ``depth`` is divided by ``depth_scale`` first (world -> stage metres when the
        calibration scales the world; one number, or one per view). ``h264``: the client's stream
        encoder, replacing JPEG."""
        start = time.perf_counter_ns()
        cfg = self.config
        if color.ndim != 4 or color.shape[-1] != 3 or tuple(depth.shape) != tuple(color.shape[:3]):
            raise ValueError(f"encode: color (B,H,W,3) and depth (B,H,W) expected, got {tuple(color.shape)} {tuple(depth.shape)}")
        b, h, w = color.shape[:3]
        dh, dw, depth_payloads, jobs = self._start_depth(depth, valid, depth_scale)  # compresses meanwhile
        keyframe, color_codec = True, "raw" if cfg.color_codec == "raw" else "jpeg"
        if h264 is not None:
            (color_bytes, keyframe), backend, color_codec = h264.encode(color), "libx264", "h264"
        else:
            color_bytes, backend = self._encode_color(color)
        depth_payloads = depth_payloads or [join_bands([j.result() for j in eye], cfg.depth_codec) for eye in jobs]
        return EncodedViews(
            color=color_bytes, depth=depth_payloads,
            width=w, height=h, depth_width=dw, depth_height=dh, depth_near=cfg.depth_near,
            depth_far=cfg.depth_far, color_codec=color_codec, depth_codec=cfg.depth_codec,
            encode_ns=time.perf_counter_ns() - start, backend=backend, keyframe=keyframe,
        )

    def _start_depth(self, depth, valid, depth_scale) -> tuple[int, int, list, list]:
        """Reduce + quantise depth; start compressing it on the pool. -> (h, w, payloads | [], band jobs)."""
        cfg = self.config
        codec, level = cfg.depth_codec, cfg.zstd_level if cfg.depth_codec == "inv16-zstd" else cfg.zlib_level
        if codec == "inv16":  # raw: nothing to overlap
            codes = self.depth_codes(depth, valid, depth_scale)
            return *codes.shape[1:], [pack_depth(q, codec) for q in codes], []
        planes = self.depth_planes(depth, valid, depth_scale)  # (B, 2, h, w) uint8
        # Depth compression (bands of rows in parallel threads) overlaps the colour encode.
        bands = depth_bands(planes.shape[2], cfg.depth_band_rows)
        jobs = [[self._pool.submit(compress_band, np.ascontiguousarray(p[:, band]), codec, level)
                 for band in bands] for p in planes]
        return *planes.shape[2:], [], jobs

    def _nvjpeg_for(self, device):
        """The nvJPEG binding's encoder for ``device``; None when configured off or it cannot load."""
        cfg, key = self.config, str(device)
        if cfg.gpu_jpeg not in ("auto", "nvjpeg"):
            return None
        if key not in self._nvjpeg:
            from gen_server.nvjpeg import NvJpegEncoder, NvJpegError  # noqa: PLC0415 - CUDA only

            try:
                self._nvjpeg[key] = NvJpegEncoder(device, cfg.jpeg_quality, cfg.jpeg_subsampling)
            except NvJpegError as e:
                if cfg.gpu_jpeg == "nvjpeg":
                    raise
                warnings.warn(f"nvJPEG binding unavailable, using torchvision's: {e}", stacklevel=3)
                self._nvjpeg[key] = None
        return self._nvjpeg[key]

    def depth_factor(self, width: int) -> int:
        """Depth reduction factor for eyes ``width`` pixels wide (auto: 512 -> 2, 1440 -> 4, 64 -> 1).
        Reprojection meshes depth on a coarse grid anyway; zlib time and bytes fall with the square."""
        cfg = self.config
        if cfg.depth_downscale > 0:
            return cfg.depth_downscale
        factor = 1
        while width / factor > cfg.max_depth_width:
            factor *= 2
        return factor

    def depth_planes(self, depth, valid, depth_scale: float | list[float]) -> np.ndarray:
        """(B, H, W) depth -> (B, 2, h, w) uint8 byte planes of the codes (split on the GPU for tensors).
        From a CUDA graph the array is a reused pinned buffer: valid until the next call."""
        if isinstance(depth, np.ndarray):
            return byte_planes(self.depth_codes(depth, valid, depth_scale))
        import torch  # noqa: PLC0415

        if depth.is_cuda and self.config.cuda_graphs and depth.dtype == torch.float32:
            graph = self._depth_graph(tuple(depth.shape), depth.device, self.depth_factor(int(depth.shape[-1])))
            if graph is not None:
                return graph(depth, valid, np.float32(1.0) / _view_scales(depth_scale, len(depth)))
        return byte_planes_torch(self._device_codes(depth, valid, depth_scale)).cpu().numpy()

    def _device_codes(self, depth, valid, depth_scale):
        """Tensor depth -> int32 codes on its device (:func:`depth_codes_torch` with this config)."""
        cfg, scales = self.config, _view_scales(depth_scale, len(depth))
        return depth_codes_torch(depth, valid, cfg.depth_near, cfg.depth_far, self.depth_factor(int(depth.shape[-1])),
                                 _recip_tensor(scales, depth.device))

    def _depth_graph(self, shape: tuple[int, int, int], device, factor: int) -> "DepthPlanesGraph | None":
        """The captured depth-code graph for this shape (a few most recent kept); None if capture fails."""
        key = (shape, str(device), factor)
        graph = self._depth_graphs.pop(key, None)
        if graph is None and key not in self._depth_graph_failed:
            try:
                graph = DepthPlanesGraph(shape, device, self.config.depth_near, self.config.depth_far, factor)
            except RuntimeError:  # e.g. another capture in flight: eager from now on for this shape
                self._depth_graph_failed.add(key)
                return None
            while len(self._depth_graphs) >= 4:
                self._depth_graphs.pop(next(iter(self._depth_graphs)))
        if graph is not None:
            self._depth_graphs[key] = graph
        return graph

    def depth_codes(self, depth, valid, depth_scale: float | list[float]) -> np.ndarray:
        """(B, H, W) depth -> (B, h, w) uint16 inverse-depth codes at the reduced resolution."""
        if not isinstance(depth, np.ndarray):  # torch: reduce + quantise on the device, copy codes only
            import torch  # noqa: PLC0415

            codes = self._device_codes(depth, valid, depth_scale)
            return codes.to(torch.uint16).cpu().numpy()  # uint16: half of int32's bytes across the bus
        cfg, f = self.config, self.depth_factor(int(depth.shape[-1]))
        d = np.asarray(depth, np.float32) * (np.float32(1.0) / _view_scales(depth_scale, len(depth)))[:, None, None]
        if valid is not None:
            d = np.where(np.asarray(valid, bool), d, np.float32(0))
        return quantize_inverse_depth(downsample_depth(d, f), cfg.depth_near, cfg.depth_far)

    def _encode_color(self, color) -> tuple[list[bytes], str]:
        cfg = self.config
        if not isinstance(color, np.ndarray):
            nvjpeg = self._nvjpeg_for(color.device) if color.is_cuda and cfg.color_codec != "raw" else None
            if nvjpeg is not None:
                return nvjpeg.encode(color), "nvjpeg"
            if color.is_cuda and cfg.color_codec != "raw":
                if self._gpu_jpeg is None:
                    self._gpu_jpeg = _torchvision_jpeg() or False
                if self._gpu_jpeg:
                    import torch  # noqa: PLC0415

                    chw = [c.permute(2, 0, 1).contiguous() for c in color]
                    # torchvision encodes on its own stream; make sure the copies above have landed
                    torch.cuda.current_stream(color.device).synchronize()
                    out = self._gpu_jpeg(chw, quality=cfg.jpeg_quality)
                    return [t.cpu().numpy().tobytes() for t in out], "torchvision-nvjpeg"
            color = color.cpu().numpy()
        color = np.ascontiguousarray(color, np.uint8)
        if cfg.color_codec == "raw":
            return [c.tobytes() for c in color], "raw"

        def one(img: np.ndarray) -> bytes:
            return simplejpeg.encode_jpeg(img, quality=cfg.jpeg_quality, colorspace="RGB",
                                          colorsubsampling=cfg.jpeg_subsampling, fastdct=True)

        if len(color) > 1 and color.shape[1] * color.shape[2] >= 128 * 128:
            return list(self._pool.map(one, color)), "simplejpeg"
        return [one(c) for c in color], "simplejpeg"


# ----------------------------------------------------------------------------------------------------
# H.264 (optional, low bandwidth): one stateful libx264 stream per eye and client
# ----------------------------------------------------------------------------------------------------
@dataclass
class H264Config:
    """libx264 for a link too thin for JPEG: zero-latency (one access unit out per frame in, no
    B-frames), a keyframe every ``gop`` frames and whenever a frame was dropped on the way."""

    crf: int = 23
    preset: str = "ultrafast"
    gop: int = 48


class H264StreamEncoder:
    """Per-client encoder of B eye streams. ``encode(color (B, H, W, 3) uint8)`` -> (access units,
    keyframe). Call :meth:`force_keyframe` when a frame did not reach the client (its decoder would
    otherwise reference a picture it never saw)."""

    def __init__(self, config: H264Config | None = None):
        self.config = config or H264Config()
        self._streams: list = []
        self._size: tuple[int, int] | None = None
        self._pts = 0
        self._force = True

    def force_keyframe(self) -> None:
        self._force = True

    def _open(self, count: int, width: int, height: int) -> None:
        import av  # noqa: PLC0415 - optional codec

        if width % 2 or height % 2:
            raise ValueError(f"h264: eye size {width}x{height} must be even (4:2:0 chroma)")
        cfg = self.config
        self._streams = []
        for _ in range(count):
            ctx = av.CodecContext.create("libx264", "w")
            ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
            ctx.time_base = fractions.Fraction(1, 1000)
            ctx.options = {"preset": cfg.preset, "tune": "zerolatency", "crf": str(cfg.crf), "bframes": "0",
                           "g": str(cfg.gop), "repeat-headers": "1"}  # SPS/PPS with every keyframe
            ctx.open()
            self._streams.append(ctx)
        self._size, self._force = (width, height), True

    def encode(self, color) -> tuple[list[bytes], bool]:
        import av  # noqa: PLC0415
        from av.video.frame import PictureType  # noqa: PLC0415

        if not isinstance(color, np.ndarray):
            color = color.cpu().numpy()
        b, h, w = color.shape[:3]
        if self._size != (w, h) or len(self._streams) != b:
            self._open(b, w, h)
        forced, self._force = self._force, False
        out, key = [], []
        for ctx, img in zip(self._streams, color):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24").reformat(format="yuv420p")
            frame.pts = self._pts
            if forced:
                frame.pict_type = PictureType.I
            packets = ctx.encode(frame)
            if not packets:
                raise RuntimeError("h264: encoder held a frame back (zero-latency tuning not in effect)")
            out.append(b"".join(bytes(p) for p in packets))
            key.append(all(p.is_keyframe for p in packets))
        self._pts += 1
        return out, all(key)
