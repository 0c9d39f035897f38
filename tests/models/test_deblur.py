"""deblur: the operators against their definitions, the PNG codec, the contraction guard, the
iterates holding past the training depth, padded batches, the serving path and `eqserve check`."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from eqserve.engine.core import Engine
from eqserve.engine.job import SolveJob
from eqserve.models.base import run_iterations
from eqserve.models.check import check_model
from eqserve.models.deblur.model import HELDOUT_FILE, WEIGHTS_FILE, Deblur, conv_norm
from eqserve.models.deblur.ops import blur, blur_adjoint, gaussian_kernel, psnr, ssim
from eqserve.models.deblur.png import decode_png, encode_png
from eqserve.models.deblur.train import TRAIN_DEPTH
from eqserve.models.shipped import WEIGHTS_DIR
from tests.conftest import make_client


@pytest.fixture(scope="module")
def model() -> Deblur:
    return Deblur.from_weights(WEIGHTS_DIR / WEIGHTS_FILE)


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---- operators ---------------------------------------------------------------------------------


def test_blur_is_the_zero_boundary_convolution_of_its_definition() -> None:
    """(A x)[i, j] = Σ k[p, q]·x[i − p + r, j − q + r], x zero outside the image: an asymmetric
    kernel, so a correlation (or a flipped kernel) would not pass."""
    x, k = _rand(2, 9, 13), _rand(2, 5, 5, seed=1)
    want = torch.zeros_like(x)
    xp = F.pad(x, (2, 2, 2, 2))
    for p in range(5):
        for q in range(5):
            want += k[:, p, q, None, None] * xp[:, 4 - p : 4 - p + 9, 4 - q : 4 - q + 13]
    torch.testing.assert_close(blur(x, k), want, rtol=0, atol=1e-12)


def test_blur_adjoint_satisfies_the_adjoint_identity() -> None:
    x, y, k = _rand(3, 17, 11, seed=2), _rand(3, 17, 11, seed=3), _rand(3, 7, 7, seed=4)
    lhs = (blur(x, k) * y).sum(dim=(1, 2))
    rhs = (x * blur_adjoint(y, k)).sum(dim=(1, 2))
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=0)


def test_blur_of_a_zero_padded_image_does_not_wrap_around() -> None:
    """Padding an image with zeros (as a batch of larger rows does) leaves its blur unchanged."""
    x, k = _rand(1, 10, 12, seed=5), gaussian_kernel(2.0, 25).unsqueeze(0)
    padded = F.pad(x, (0, 30, 0, 20))
    torch.testing.assert_close(blur(padded, k)[:, :10, :12], blur(x, k), rtol=0, atol=1e-12)


def test_gaussian_kernel_is_normalised_centred_and_symmetric() -> None:
    k = gaussian_kernel(1.5)
    assert k.shape == (11, 11) and abs(float(k.sum()) - 1) < 1e-12
    assert int(k.argmax()) == 5 * 11 + 5
    torch.testing.assert_close(k, k.flip(0).flip(1).T)


def test_psnr_of_known_pairs() -> None:
    x = _rand(2, 16, 16, seed=6)
    torch.testing.assert_close(psnr(x + 0.1, x), torch.full((2,), 20.0, dtype=torch.float64))
    torch.testing.assert_close(psnr(x - 0.01, x), torch.full((2,), 40.0, dtype=torch.float64))


def _ssim_by_definition(x: np.ndarray, y: np.ndarray) -> float:
    """Mean over every 11×11 window inside the image of the Gaussian-weighted SSIM of Wang et al."""
    w = gaussian_kernel(1.5, 11).numpy()
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            a, b = x[i : i + 11, j : j + 11], y[i : i + 11, j : j + 11]
            ma, mb = (w * a).sum(), (w * b).sum()
            va, vb = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum()
            cov = (w * (a - ma) * (b - mb)).sum()
            values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_ssim_of_known_pairs() -> None:
    x, noise = _rand(1, 20, 23, seed=7), _rand(1, 20, 23, seed=8) - 0.5
    assert float(ssim(x, x)) == pytest.approx(1.0, abs=1e-12)
    y = (x + 0.3 * noise).clamp(0, 1)
    want = _ssim_by_definition(x[0].numpy(), y[0].numpy())
    assert float(ssim(y, x)) == pytest.approx(want, abs=1e-10)
    assert 0 < want < 0.99  # a pair far from identical, so the comparison means something


# ---- PNG ---------------------------------------------------------------------------------------


def test_png_round_trips_8_bit_values_exactly() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (13, 21)) / 255
    np.testing.assert_array_equal(decode_png(encode_png(pixels)), pixels)


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_png_reads_what_pillow_writes_and_pillow_reads_ours(mode: str) -> None:
    image_mod = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(1)
    grey = (np.add.outer(np.arange(20), np.arange(30)) * 4 + rng.integers(0, 30, (20, 30))).clip(0, 255)
    img = image_mod.fromarray(grey.astype(np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    want = np.asarray(img.convert("RGB"), np.float64) @ np.array([0.299, 0.587, 0.114]) / 255
    np.testing.assert_allclose(decode_png(buf.getvalue()), want, atol=1e-12)
    ours = image_mod.open(io.BytesIO(encode_png(grey / 255)))
    np.testing.assert_array_equal(np.asarray(ours), grey)


def test_png_undoes_the_average_filter() -> None:
    """Pillow never writes filter 3 (average): build one by its definition, Filt = Orig − ⌊(a + b)/2⌋."""
    orig = np.random.default_rng(2).integers(0, 256, (6, 9))
    raw = bytearray()
    for i in range(6):
        up = orig[i - 1] if i else np.zeros(9, np.int64)
        left = np.concatenate([[0], orig[i, :-1]])
        raw += bytes([3]) + bytes(((orig[i] - (left + up) // 2) % 256).astype(np.uint8))
    png = encode_png(np.zeros((6, 9)))
    start = png.index(b"IDAT") - 4
    end = start + 12 + struct.unpack(">I", png[start : start + 4])[0]
    data = zlib.compress(bytes(raw))
    idat = struct.pack(">I", len(data)) + b"IDAT" + data + struct.pack(">I", zlib.crc32(b"IDAT" + data))
    np.testing.assert_array_equal(decode_png(png[:start] + idat + png[end:]), orig / 255)


# ---- the contraction guard and the iterates ----------------------------------------------------


def test_denoiser_is_a_contraction_bounded_and_measured(model: Deblur) -> None:
    """The bound α + (1 − α)·Π‖conv‖ < 1, and the largest Jacobian singular value of D at held-out
    images (power iteration through autograd) stays below it."""
    bound = model.denoiser.lipschitz_bound()
    assert bound < 1
    held = load_file(str(WEIGHTS_DIR / HELDOUT_FILE))
    z, noise = held["blurred"][:4], held["noise"][:4]
    mask = torch.ones_like(z)
    v = F.normalize(torch.randn(z.shape, generator=torch.Generator().manual_seed(0)).flatten(1), dim=1)
    for _ in range(30):
        _, jv = torch.func.jvp(lambda t: model.denoiser(t, noise, mask), (z,), (v.view_as(z),))
        _, vjp = torch.func.vjp(lambda t: model.denoiser(t, noise, mask), z)
        v = F.normalize(vjp(jv)[0].flatten(1), dim=1)
    _, jv = torch.func.jvp(lambda t: model.denoiser(t, noise, mask), (z,), (v.view_as(z),))
    measured = jv.flatten(1).norm(dim=1).max().item()
    assert 0 < measured <= bound + 1e-5


def test_loading_refuses_a_denoiser_that_is_not_a_contraction(tmp_path: Path) -> None:
    state = load_file(str(WEIGHTS_DIR / WEIGHTS_FILE))
    state["denoiser.convs.1.weight"] = state["denoiser.convs.1.weight"] * 4
    assert conv_norm(state["denoiser.convs.1.weight"]) > 1
    save_file(state, str(tmp_path / WEIGHTS_FILE))
    with pytest.raises(ValueError, match="would not be a contraction"):
        Deblur.from_weights(tmp_path / WEIGHTS_FILE)


def test_psnr_holds_from_the_training_depth_to_four_times_it(model: Deblur) -> None:
    held = load_file(str(WEIGHTS_DIR / HELDOUT_FILE))
    ctx = model.batch_context(held["blurred"][:6], held["kernel"][:6], held["noise"][:6])
    ys = run_iterations(model, ctx, torch.zeros_like(ctx["b"]), [TRAIN_DEPTH, 4 * TRAIN_DEPTH])
    sharp = held["sharp"][:6]
    at_depth, later = (psnr(ys[t].clamp(0, 1), sharp).mean().item() for t in (TRAIN_DEPTH, 4 * TRAIN_DEPTH))
    assert later >= at_depth - 0.1
    assert at_depth > psnr(held["blurred"][:6], sharp).mean().item() + 1  # it deblurs at all


# ---- batches, serving, check -------------------------------------------------------------------


def _request(shape: tuple[int, int], seed: int, **extra: object) -> dict:
    image = _rand(*shape, seed=seed).float()
    return {"image": image.tolist(), **extra}


def test_rows_of_two_sizes_and_kernels_in_one_batch_each_iterate_as_alone(model: Deblur) -> None:
    small = model.encode(model.Input(**_request((20, 27), 0, kernel=_rand(5, 5, seed=9).tolist())))
    large = model.encode(model.Input(**_request((32, 32), 1, blur_sigma=2.0, noise_level=0.02)))
    bctx = model.collate([small, large])
    y = torch.zeros(2, 32, 32)
    alone = [torch.zeros(1, 20, 27), torch.zeros(1, 32, 32)]
    for _ in range(8):
        y = model.step(y, bctx)
        alone = [model.step(a, model.collate([c])) for a, c in zip(alone, (small, large), strict=True)]
    torch.testing.assert_close(y[:1, :20, :27], alone[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(y[1:], alone[1], rtol=0, atol=1e-5)
    assert y[0, 20:].abs().max() == 0 and y[0, :, 27:].abs().max() == 0


def test_the_engine_serves_two_sizes_in_one_batch_as_alone(model: Deblur) -> None:
    def job(shape: tuple[int, int], seed: int) -> SolveJob:
        ctx = model.encode(model.Input(**_request(shape, seed)))
        y0 = model.init(ctx)
        return SolveJob(id=f"r{seed}", ctx=ctx, y0=y0, max_iters=40, tol=1e-4, m=0, return_state=True)

    engine = Engine(model)
    together = [engine.submit(job(s, i)) for i, s in enumerate([(24, 40), (36, 20)])]
    engine.start()  # both are admitted into one batch of shape (36, 40)
    try:
        results = [f.result(timeout=120) for f in together]
        alone = [engine.submit(job(s, i)).result(timeout=120) for i, s in enumerate([(24, 40), (36, 20)])]
    finally:
        engine.stop()
    for r, a, shape in zip(results, alone, [(24, 40), (36, 20)], strict=True):
        assert torch.tensor(r.state).shape == shape and r.iterations == a.iterations
        torch.testing.assert_close(torch.tensor(r.state), torch.tensor(a.state), rtol=0, atol=1e-5)


def test_solve_a_png_with_its_sharp_image_over_http(model: Deblur) -> None:
    held = load_file(str(WEIGHTS_DIR / HELDOUT_FILE))
    blurred, sharp = held["blurred"][1].numpy(), held["sharp"][1].numpy()
    body = {
        "model": "deblur",
        "input": {
            "image_png": base64.b64encode(encode_png(blurred)).decode(),
            "sharp_png": base64.b64encode(encode_png(sharp)).decode(),
            "noise_level": float(held["noise"][1]),
            "blur_sigma": 1.5,
        },
    }
    with make_client({"deblur": model}) as client:
        r = client.post("/v1/solve", json=body)
        assert r.status_code == 200, r.text
        out = r.json()["output"]
        restored = decode_png(base64.b64decode(out["image_png"]))
        assert restored.shape == blurred.shape
        np.testing.assert_allclose(restored, np.asarray(out["image"]), atol=0.5 / 255 + 1e-6)
        blurred_psnr = float(psnr(torch.tensor(blurred).clamp(0, 1)[None], torch.tensor(sharp)[None]))
        assert out["psnr"] > blurred_psnr + 1 and 0 < out["ssim"] <= 1
        only = client.post("/v1/solve", json=body | {"input": body["input"] | {"output": "png"}}).json()
        assert set(only["output"]) == {"image_png", "psnr", "ssim"}


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"kernel": [[1.0, 1.0], [1.0, 1.0]]}, "input.kernel"),
        ({"kernel": [[0.0, -1.0, 0.0]] * 3}, "input.kernel"),
        ({"image": [[0.5] * 12] * 11 + [[0.5] * 11]}, "input.image"),
        ({"image": [[0.5] * 8] * 8}, "input.image"),
        ({"image": None, "image_png": "bm90IGEgcG5n"}, "input.image_png"),
    ],
)
def test_bad_inputs_are_refused_naming_the_field(model: Deblur, extra: dict, field: str) -> None:
    body = {"model": "deblur", "input": {"image": [[0.5] * 16] * 16} | extra}
    body["input"] = {k: v for k, v in body["input"].items() if v is not None}
    with make_client({"deblur": model}) as client:
        r = client.post("/v1/solve", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field


def test_eqserve_check_passes(model: Deblur) -> None:
    report = check_model(model)
    assert report.ok, report.render()
    assert not report.warnings, report.render()
