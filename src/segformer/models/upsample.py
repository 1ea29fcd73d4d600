"""Bilinear upsampling fused with what follows it: argmax (inference) and cross-entropy (training);
the threshold of a one-logit (binary) network's sigmoid.

Both compute the same function as ``F.interpolate(logits, size, mode="bilinear",
align_corners=False)`` followed by ``argmax(1)`` or ``F.cross_entropy``, without ever holding the
(B, K, H, W) float tensor of upsampled logits: at 512 x 512 with 150 classes that is 157 MB per
image, and reading and writing it is most of the cost of the last step.

An output pixel is a convex mix of its low-resolution cell's four corners (edge-clamped), with
weights ``wy`` and ``wx`` computed as ATen does. Values agree with ATen's to float rounding (the
mix is evaluated as two nested lerps, ATen sums four products), so an argmax can only differ
where the top two classes tie to about 1e-6.

These are CPU paths (cache-sized bands, data-dependent shapes). On a GPU, ATen's fused
interpolate / argmax / cross-entropy kernels are faster (measured on an H200: the banded loss made
a B0 training step 8x slower than the plain one), so other devices take the plain functions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from segformer.models.valid_pixels import valid_count, valid_mean


def resize_bilinear(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, *size), bilinear with align_corners=False (mmseg's ``resize``);
    ``x`` itself when it has that size already."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _source_index(out_size: int, in_size: int, device: torch.device):
    """Neighbour indices i0, i1 and weight of i1 of bilinear, align_corners=False (as ATen)."""
    scale = torch.tensor(in_size, dtype=torch.float32, device=device) / out_size
    src = ((torch.arange(out_size, device=device) + 0.5) * scale - 0.5).clamp_(min=0)
    i0 = src.long()  # floor, src >= 0
    i1 = (i0 + 1).clamp_(max=in_size - 1)
    return i0, i1, src - i0


def _corner_cells(n: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    """Flat indices of the corners (i, j), (i, j+1), (i+1, j), (i+1, j+1) of every cell (b, i, j),
    edge-clamped: (4, n*h*w)."""
    cells = torch.arange(n * h * w, device=device)
    right = cells + (cells % w < w - 1)
    down = (cells // w % h < h - 1) * w
    return torch.stack([cells, right, cells + down, right + down])


def _expand(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Items owned counts[k] at a time -> (owner k, index within the owner) of every item."""
    owner = torch.repeat_interleave(counts)
    start = counts.cumsum(0) - counts
    return owner, torch.arange(owner.numel(), device=counts.device) - start[owner]


@torch.no_grad()
def upsample_argmax(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``F.interpolate(logits, size, bilinear).argmax(1)``, mixing candidate classes only.

    Within a low-res cell the difference of two classes' mixes is bilinear in the weights, so
    it peaks at a corner: a class can beat a reference class r anywhere in the cell only if it
    reaches r at one of the four corners. Taking for r the corner top class with the best
    smallest corner value, most cells of a trained model have r as their only candidate, and
    their pixels take r. The other cells are mixed over their candidates only, grouped by
    candidate count (at most T = 4, 8, 16, ...) and mixed as dense (cells, ny, nx, T) blocks of
    their ny x nx output pixels (``_CellPixels``).
    (B, K, h, w) -> (B, H, W) int64.
    """
    if logits.device.type != "cpu":
        return resize_bilinear(logits, size).argmax(1)
    B, K, h, w = logits.shape
    H, W = size
    device = logits.device
    y0, _, wy = _source_index(H, h, device)
    x0, _, wx = _source_index(W, w, device)
    table = logits.permute(0, 2, 3, 1).float().contiguous()  # (B, h, w, K): a view if fp32 NHWC
    flat = table.view(-1, K)
    corners = _corner_cells(B, h, w, device)  # (4, B*h*w)
    tops = flat.argmax(1)[corners]  # (4, B*h*w) the top class of each corner of each cell
    # r: the one of ``tops`` with the best floor (smallest corner value); compared in turn,
    # as ATen's argmax over a dimension of 4 is 30x slower (measured)
    floors = torch.stack([flat.take(c * K + tops) for c in corners]).amin(0)  # (4, B*h*w)
    ref, best = tops[0], floors[0]
    for top, floor in zip(tops[1:], floors[1:], strict=True):
        better = floor > best
        ref, best = torch.where(better, top, ref), torch.maximum(best, floor)
    # its value at each corner, less an ulp of the largest magnitude for rounding in the mix
    slack = 1e-6 * torch.maximum(flat.amax(), -flat.amin())
    at = [flat.take(c * K + ref).view(B, h, w, 1) - slack for c in corners]  # 4 x (B, h, w, 1)
    # candidates: classes reaching r at some corner; the last row / column are clamped, their
    # missing corners repeat corner (i, j), (i, j+1) or (i+1, j)
    mask = table >= at[0]  # (B, h, w, K)
    mask[:, :, :-1] |= table[:, :, 1:] >= at[1][:, :, :-1]
    mask[:, :-1] |= table[:, 1:] >= at[2][:, :-1]
    mask[:, :-1, :-1] |= table[:, 1:, 1:] >= at[3][:, :-1, :-1]
    mask = mask.view(-1, K)
    # (B*h*w,) >= 1 (r is one); summed in uint8 (exact for K < 256, 20x faster than int32)
    count = mask.view(torch.uint8).sum(1, dtype=torch.uint8 if K < 256 else torch.float32).int()
    y_axis, x_axis = (*_owned_pixels(y0, h), wy), (*_owned_pixels(x0, w), wx)  # first, count, w
    # near-ties everywhere (random logits): mixing T >= count candidates for every pixel of
    # every such cell costs more than mixing all K in cache-sized bands; take the bands then
    many = count > 1
    if many.any():
        pixels = (y_axis[1][:, None] * x_axis[1]).expand(B, h, w).reshape(-1)[many]
        group = torch.exp2(torch.log2(count[many].float()).ceil()).clamp(4, K)  # T of each
        share = (pixels * group).sum() / (B * H * W * K)
        if share > DENSE_SHARE:
            return _banded_argmax(table, size)
    out = ref.view(B, h, w)[:, y0][:, :, x0]  # (B, H, W) right for 1-candidate cells
    pixels_of = _CellPixels(y_axis, x_axis, (h, w), size)
    T = 1
    while T < K and (count > T).any():  # the cells with T < count <= 2T, then 2T < count ...
        top = min(max(4, 2 * T), K)  # 2..4 candidates in one group: argmax over 2 is slow
        cells = ((count > T) & (count <= top)).nonzero().squeeze(1)  # (Mc,) flat (b, i, j)
        T = top
        if cells.numel() == 0:
            continue
        if T == K:  # every class: no list to build
            classes = torch.arange(K, device=device).expand(cells.numel(), K)
        else:  # candidates in class order, padded with the reference class: (Mc, T)
            rows, cls = mask.index_select(0, cells).nonzero(as_tuple=True)
            classes = ref[cells, None].repeat(1, T)
            classes[rows, _expand(count[cells])[1]] = cls
        for part, wy_c, wx_c, pos in pixels_of(cells, T):
            cand = classes[part]  # (Mc, T)
            corner_base = corners[:, cells[part], None] * K  # (4, Mc, 1) offsets in flat
            c00, c01, c10, c11 = (flat.take(base + cand) for base in corner_base)
            # the cell's pixels as a (Mc, ny, nx, T) block: x-mix per column, y-mix per pixel
            upper = torch.lerp(c00[:, None], c01[:, None], wx_c)  # (Mc, nx, T)
            lower = torch.lerp(c10[:, None], c11[:, None], wx_c)
            mix = torch.lerp(upper[:, None], lower[:, None], wy_c)  # (Mc, ny, nx, T)
            best = mix.flatten(1, 2).argmax(-1)  # (Mc, ny*nx)
            out.view(-1)[pos] = cand.gather(1, best).view(-1)
    return out


class _CellPixels:
    """The output pixels of low-res cells as dense blocks. ``self(cells, T)`` (T candidate
    classes per cell) yields chunks of the cells (flat (b, i, j) indices) as (positions in
    ``cells``, row weights (Mc, ny, 1, 1), column weights (Mc, nx, 1), flat output positions
    (Mc * ny * nx,)), so that a chunk's mixes are one (Mc, ny, nx, T) tensor. Most cells own
    the same ny x nx pixels (4 x 4 at scale 4); the others (the edges, uneven scales) take the
    largest block, repeating their last row or column, which writes one class twice to the same
    pixel. A chunk holds about ``elements`` mixes."""

    def __init__(
        self,
        y_axis: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        x_axis: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        low: Sequence[int],
        size: Sequence[int],
        elements: int = 1 << 21,
    ) -> None:
        # per low-res row / column: first output pixel and count (``_owned_pixels``); per
        # output row / column: weight
        self.y, self.x = y_axis, x_axis
        (self.h, self.w), (self.H, self.W) = low, size
        self.elements = elements

    def __call__(self, cells: torch.Tensor, candidates: int) -> Iterator[tuple[torch.Tensor, ...]]:
        i, j = cells // self.w % self.h, cells % self.w
        ny, nx = self.y[1][i], self.x[1][j]
        owns = (ny > 0) & (nx > 0)  # a cell owns no pixel when h > H or w > W
        regular = owns & (ny == _mode(ny[owns])) & (nx == _mode(nx[owns]))
        for members in (regular.nonzero().squeeze(1), (owns & ~regular).nonzero().squeeze(1)):
            if members.numel() == 0:
                continue
            n_y, n_x = int(ny[members].max()), int(nx[members].max())
            step = max(1, self.elements // (n_y * n_x * candidates))
            for part in members.split(step):
                ys, wy = _block_axis(self.y, i[part], n_y)  # (Mc, ny)
                xs, wx = _block_axis(self.x, j[part], n_x)  # (Mc, nx)
                b = cells[part, None, None] // (self.h * self.w)
                pos = (b * self.H + ys[:, :, None]) * self.W + xs[:, None, :]  # (Mc, ny, nx)
                yield part, wy[..., None, None], wx[..., None], pos.view(-1)


def _owned_pixels(i0: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The output pixels each of ``n`` low-res rows (or columns) owns, from every output
    pixel's first source index ``i0`` (ascending): the first one and how many (0 for a row that
    a smaller output skips)."""
    index = torch.arange(n, device=i0.device)
    first = torch.searchsorted(i0, index)
    return first, torch.searchsorted(i0, index, right=True) - first


def _mode(counts: torch.Tensor) -> int:
    """The most frequent of non-negative ``counts`` (0 when empty)."""
    return int(counts.bincount().argmax()) if counts.numel() else 0


def _block_axis(
    axis: tuple[torch.Tensor, torch.Tensor, torch.Tensor], cell: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output indices and weights of the first ``n`` pixels along one axis of each cell,
    (cells, n), the last one repeated where a cell owns fewer. ``axis``: each low-res row's (or
    column's) first output pixel and count, and every output pixel's weight."""
    first, count, weight = axis
    offset = torch.arange(n, device=cell.device).expand(len(cell), n)
    index = first[cell, None] + torch.minimum(offset, count[cell, None] - 1)
    return index, weight[index]


# the share of all-class work (B*H*W*K mixes) above which the candidate groups of
# ``upsample_argmax`` give way to all classes in bands. Measured on an AVX2 EPYC (Zen 3), two
# threads, 512x512, 150 classes: a random-init B0 on a white-noise image has a share of 0.16 and
# the candidate path takes half the time of the bands (39 vs 80 ms); white-noise logits
# (0.02 * randn) have a share of 0.86 and the candidate path takes 1.3-1.5x the bands' time
DENSE_SHARE = 0.5


def _banded_argmax(table: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w, K) -> argmax over K of the bilinear upsample, (B, H, W), in cache-sized bands."""
    out = torch.empty(table.shape[0], *size, dtype=torch.long, device=table.device)
    for b in range(table.shape[0]):  # an image at a time: bands of several rows
        image = table[b : b + 1]
        bands = _Bands(image, size, elements=1 << 18)
        for rows in bands.rows:
            out[b : b + 1, rows] = bands.upsample(image, bands.source(rows)).argmax(-1)
    return out


@torch.no_grad()
def upsample_threshold(
    logits: torch.Tensor, size: Sequence[int], threshold: float = 0.5
) -> torch.Tensor:
    """The class map of a one-logit (binary) network: ``F.interpolate(logits, size, bilinear)
    .sigmoid() > threshold``, (B, 1, h, w) -> (B, H, W) int64, 1 = foreground. One channel
    upsampled is no larger than the class map, so nothing is fused here."""
    return (resize_bilinear(logits.float(), size)[:, 0].sigmoid() > threshold).long()


class _Bands:
    """Bilinear upsampling (B, h, w, K) -> (B, H, W, K) in bands of output rows, with its adjoint.

    A band holds about ``elements`` values, so nothing of the full output size is ever
    allocated. Columns first: the source rows a band reads are widened to W (ATen's bilinear
    kernel, on about a quarter of the band's rows at scale 4); then rows, as one small matmul
    ``(rows, r) @ (r, W*K)`` that writes the band in a single pass. The adjoint is the
    transposed matmul (one read of the band) and ATen's adjoint of the widening.
    """

    def __init__(self, table: torch.Tensor, size: Sequence[int], elements: int = 1 << 21):
        B, h, w, K = table.shape
        H, W = size
        self.w, self.W = w, W
        self.y0, self.y1, self.wy = _source_index(H, h, table.device)
        self.x0, self.x1, self.wx = _source_index(W, w, table.device)
        step = max(1, elements // (B * W * K))
        self.rows = [slice(i, min(i + step, H)) for i in range(0, H, step)]

    def source(self, rows: slice) -> tuple[int, int, torch.Tensor]:
        """Source rows first:last of a band and its row mix (rows, last - first): each output
        row's weights of its two source rows (ATen's 1 - wy and wy; one 1 where edge-clamped)."""
        first, last = int(self.y0[rows][0]), int(self.y1[rows][-1]) + 1
        y0, y1, wy = self.y0[rows] - first, self.y1[rows] - first, self.wy[rows]
        mix = wy.new_zeros(len(wy), last - first)
        index = torch.arange(len(wy), device=wy.device)
        mix.index_put_((index, y0), 1 - wy, accumulate=True)
        return first, last, mix.index_put_((index, y1), wy, accumulate=True)

    def widen(self, src: torch.Tensor) -> torch.Tensor:
        """(B, r, w, K) -> (B, r, W, K), bilinear along columns (ATen's channels-last kernel;
        rows keep their size, which is exactly the identity)."""
        out = F.interpolate(
            src.permute(0, 3, 1, 2), (src.shape[1], self.W), mode="bilinear", align_corners=False
        )
        return out.permute(0, 2, 3, 1)  # contiguous unless a side is 1 (then .reshape copies)

    def widen_adjoint(self, grad: torch.Tensor) -> torch.Tensor:
        """Gradient w.r.t. the widened rows (B, r, W, K) -> w.r.t. the source rows (B, r, w, K)."""
        B, r, W, K = grad.shape
        out = torch.ops.aten.upsample_bilinear2d_backward(
            grad.permute(0, 3, 1, 2), [r, W], [B, K, r, self.w], False
        )
        return out.permute(0, 2, 3, 1)

    def upsample(self, table: torch.Tensor, source: tuple[int, int, torch.Tensor]) -> torch.Tensor:
        """(B, h, w, K) -> the band (B, rows, W, K) of ``source = self.source(rows)``."""
        first, last, mix = source
        cols = self.widen(table[:, first:last])  # (B, r, W, K)
        B, r, W, K = cols.shape
        return torch.matmul(mix, cols.reshape(B, r, W * K)).view(B, len(mix), W, K)

    def corners(self, table: torch.Tensor, classes: torch.Tensor) -> tuple[list, list]:
        """Where the upsampled value of class ``classes[b, y, x]`` at each output pixel comes
        from: the flat indices into ``table`` of its four corners and their weights, each
        4 x (B, H, W)."""
        B, h, w, K = table.shape
        y0, y1, wy = (t[:, None] for t in (self.y0, self.y1, self.wy))  # (H, 1)
        b = torch.arange(B, device=table.device)[:, None, None] * h
        index = [((b + y) * w + x) * K + classes for y in (y0, y1) for x in (self.x0, self.x1)]
        weight = [a * c for a in (1 - wy, wy) for c in (1 - self.wx, self.wx)]  # (H, W)
        return index, [wt.expand_as(classes) for wt in weight]


class _UpsampleCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of bilinearly upsampled logits, band by band: the (B, K, H, W)
    upsampled logits and their softmax (the largest activations of a training step) never exist
    whole. When the logits need a gradient it is computed in the same pass over each band (the
    loss's gradient is the softmax less the one-hot target, both already at hand) and kept at the
    logits' size, so the backward pass only scales it. The target's -1 goes straight to the four
    corners it was mixed from, not through the bands."""

    @staticmethod
    def forward(ctx, logits, target, ignore_index, weight):
        table = logits.detach().permute(0, 2, 3, 1).float().contiguous()  # (B, h, w, K)
        keep = target != ignore_index  # (B, H, W)
        safe = torch.where(keep, target, 0)[..., None]  # (B, H, W, 1) ignored -> any class
        # per-pixel weight: class weight (or 1) where kept, 0 where ignored; F.cross_entropy's
        # weighted mean divides by the summed weights of the kept pixels
        pixel_w = keep.float() if weight is None else weight.float()[safe[..., 0]] * keep
        count = pixel_w.sum()
        bands = _Bands(table, target.shape[-2:])
        total = table.new_zeros(())
        if not ctx.needs_input_grad[0]:
            for rows in bands.rows:
                log_p = bands.upsample(table, bands.source(rows)).log_softmax(-1)  # (B, rows, W, K)
                total -= (log_p.gather(-1, safe[:, rows]).squeeze(-1) * pixel_w[:, rows]).sum()
            return valid_mean(total, count)  # 0 when every pixel is ignored (valid_pixels.py)
        scale = pixel_w / valid_count(count)  # (B, H, W): d loss / d nll of each pixel
        g_table = torch.zeros_like(table)  # d loss / d table
        for rows in bands.rows:
            first, last, mix = source = bands.source(rows)
            z = bands.upsample(table, source)  # (B, n, W, K)
            p = z.softmax(-1)
            total += (_nll(z, p, safe[:, rows]) * pixel_w[:, rows]).sum()
            B, n, W, K = p.shape
            p = p.mul_(scale[:, rows, :, None]).view(B, n, W * K)  # the softmax part
            g_cols = torch.matmul(mix.t(), p).view(B, -1, W, K)  # (B, r, W, K)
            g_table[:, first:last] += bands.widen_adjoint(g_cols)
        # the one-hot part: -scale at the target class, to the four corners of each pixel
        g_flat = g_table.view(-1)
        for index, corner_w in zip(*bands.corners(table, safe[..., 0]), strict=True):
            g_flat.index_add_(0, index.view(-1), (corner_w * scale).view(-1), alpha=-1)
        ctx.save_for_backward(g_table)
        ctx.logits_dtype = logits.dtype
        return valid_mean(total, count)

    @staticmethod
    def backward(ctx, grad):
        (g_table,) = ctx.saved_tensors
        return (grad * g_table).permute(0, 3, 1, 2).to(ctx.logits_dtype), None, None, None


def _nll(z: torch.Tensor, p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-log softmax(z)[target] from the softmax ``p`` already computed, (B, n, W): exact to
    float rounding where p is a normal float; recomputed as a log-softmax where the target's
    probability underflows (a logit gap over ~87), which -log(p) would turn into inf."""
    p_target = p.gather(-1, target).squeeze(-1)
    nll = -p_target.log()
    tiny = p_target < 1e-30
    if tiny.any():
        nll[tiny] = -z[tiny].log_softmax(-1).gather(-1, target[tiny]).squeeze(-1)
    return nll


def upsample_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = 255,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """``F.cross_entropy(F.interpolate(logits, target.shape[-2:], mode="bilinear"), target,
    weight=weight, ignore_index=ignore_index)`` (weighted mean over kept pixels) in bands: the
    upsampled logits never exist whole, in the forward or the backward pass. With no kept pixel
    (or zero summed weight) the loss is 0 with a zero gradient, not F.cross_entropy's NaN
    (``valid_pixels.valid_mean``). logits (B, K, h, w), target (B, H, W), weight (K,) or None."""
    if logits.device.type != "cpu":
        return fused_upsample_cross_entropy(logits, target, ignore_index, weight)
    return _UpsampleCrossEntropy.apply(logits, target, ignore_index, weight)


def fused_upsample_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = 255,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """The same loss with ATen's interpolate and cross-entropy (what non-CPU devices run): the
    sum over kept pixels, divided as ``valid_mean`` does."""
    up = resize_bilinear(logits.float(), target.shape[-2:])
    total = F.cross_entropy(up, target, weight=weight, ignore_index=ignore_index, reduction="sum")
    return valid_mean(total, _kept_weight(target, ignore_index, weight))


def _kept_weight(
    target: torch.Tensor, ignore_index: int, weight: torch.Tensor | None
) -> torch.Tensor:
    """The divisor of F.cross_entropy's mean: kept pixels, or their summed class weights."""
    keep = target != ignore_index
    if weight is None:
        return keep.sum(dtype=torch.float32)
    return (weight.float()[torch.where(keep, target, 0)] * keep).sum()
