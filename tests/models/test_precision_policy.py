"""``precision="auto"``: the choices of the precision policy and of the attention kernels,
tested by injecting the machine's facts and measurements (never by timing here)."""

from __future__ import annotations

import json

import pytest
import torch

from napari_sam2.models import kernel_choice, precision_policy
from napari_sam2.models.attention_kernels import sdpa
from napari_sam2.models.precision_policy import (
    CpuInfo,
    MachineRecord,
    PrecisionChoice,
    ProductRates,
    choose_precision,
    isa_from_flags,
)

AMX = CpuInfo("Intel Xeon", ("AMX", "AVX-512-BF16", "AVX-512", "AVX2"))
ZEN5 = CpuInfo("AMD EPYC", ("AVX-512-BF16", "AVX-512", "AVX2"))
AVX2 = CpuInfo("Intel Core", ("AVX2",))
FAST_BF16 = ProductRates(fp32=213.0, bf16=2012.0, split_fp32=400.0)


def test_cuda_runs_bfloat16_as_sam2_does():
    choice = choose_precision("cuda")
    assert choice.mode == "bf16" and "autocast" in choice.reason


def test_other_accelerators_stay_float32():
    assert choose_precision("mps").mode == "fp32"


def test_a_cpu_with_amx_that_measures_faster_runs_bfloat16():
    choice = choose_precision("cpu", AMX, FAST_BF16)
    assert choice == PrecisionChoice(
        "bf16", "this CPU has AMX (bfloat16 products 9.4x faster than float32)"
    )
    assert choice.describe().startswith("bf16: this CPU has AMX")
    assert choose_precision("cpu", ZEN5, ProductRates(140.0, 415.0)).mode == "bf16"


def test_bfloat16_units_are_confirmed_by_measurement():
    """Flags alone are not enough: units that measure no faster mean float32."""
    slow = ProductRates(fp32=200.0, bf16=210.0, split_fp32=None)
    choice = choose_precision("cpu", ZEN5, slow)
    assert choice.mode == "fp32" and "only 1.1x faster" in choice.reason
    split = ProductRates(fp32=200.0, bf16=210.0, split_fp32=260.0)
    assert choose_precision("cpu", ZEN5, split).mode == "fast"


def test_a_cpu_without_bfloat16_units_runs_float32():
    choice = choose_precision("cpu", AVX2, ProductRates(fp32=100.0, bf16=400.0, split_fp32=300.0))
    assert choice.mode == "fp32" and "no bfloat16 units" in choice.reason


def test_an_isa_cap_disables_the_units():
    capped = CpuInfo(ZEN5.name, ZEN5.isa, isa_cap="AVX2")
    assert capped.bf16_units is None
    choice = choose_precision("cpu", capped, ProductRates(fp32=139.0, bf16=0.9, split_fp32=189.0))
    assert choice.mode == "fp32" and "ONEDNN_MAX_CPU_ISA=AVX2" in choice.reason
    assert CpuInfo(AMX.name, AMX.isa, "AVX512_CORE_BF16").bf16_units == "AVX-512-BF16"
    assert CpuInfo(AMX.name, AMX.isa, "AVX512_CORE_AMX").bf16_units == "AMX"
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in capped.describe()


def test_isa_from_the_operating_systems_flags():
    assert isa_from_flags({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}, "x86_64") == (
        "AMX", "AVX-512-BF16", "AVX-512", "AVX2")
    assert isa_from_flags({"avx2", "fma"}, "x86_64") == ("AVX2",)
    assert isa_from_flags({"asimd", "bf16"}, "aarch64") == ("NEON-BF16", "NEON")
    assert isa_from_flags(set(), "x86_64") == ()


def test_this_machine_is_described():
    cpu = precision_policy.cpu_info()
    assert cpu.name and isinstance(cpu.isa, tuple)
    assert cpu.describe().startswith(cpu.name)


@pytest.fixture
def fresh_policy(monkeypatch, tmp_path):
    """An empty cache folder and no decisions made yet in this process."""
    monkeypatch.setenv("NAPARI_SAM2_CACHE", str(tmp_path))
    monkeypatch.setattr(precision_policy, "_record", None)
    monkeypatch.setattr(precision_policy, "_resolved", {})
    return tmp_path


def test_auto_measures_once_and_keeps_the_rates_per_machine(fresh_policy, monkeypatch):
    calls = []

    def measure(*args, **kwargs):
        calls.append(1)
        return FAST_BF16

    monkeypatch.setattr(precision_policy, "measure_products", measure)
    monkeypatch.setattr(precision_policy, "cpu_info", lambda: AMX)
    choice = precision_policy.resolve_precision("auto", "cpu")
    assert choice.mode == "bf16" and "AMX" in choice.reason
    assert precision_policy.resolve_precision("auto", torch.device("cpu")) is choice
    files = list((fresh_policy / "machine").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["products"]["bf16"] == 2012.0
    # A new process (forgotten decisions) reads the file instead of measuring again.
    monkeypatch.setattr(precision_policy, "_record", None)
    monkeypatch.setattr(precision_policy, "_resolved", {})
    assert precision_policy.resolve_precision("auto", "cpu").mode == "bf16"
    assert calls == [1]
    assert precision_policy.resolve_precision("fp32", "cpu") == PrecisionChoice(
        "fp32", "chosen explicitly")


def test_a_corrupt_or_unwritable_record_only_means_measuring(tmp_path):
    path = tmp_path / "m.json"
    path.write_text("{not json")
    record = MachineRecord(path)
    assert record.get("products") is None
    record.update({"products": {"fp32": 1.0, "bf16": 2.0}})
    assert json.loads(path.read_text())["products"]["bf16"] == 2.0
    blocked = tmp_path / "file"
    blocked.write_text("")
    MachineRecord(blocked / "sub" / "m.json").update({"x": 1})  # no error: just not kept
    assert not list(tmp_path.glob(".*.tmp"))


def test_set_precision_records_the_choice_and_why(monkeypatch):
    from napari_sam2.models.build import build_model
    from napari_sam2.models.precision import set_precision

    monkeypatch.setattr(precision_policy, "_resolved",
                        {"cpu": PrecisionChoice("bf16", "injected")})
    model = build_model("sam2.1_hiera_t", image_size=256, precision="fp32")
    set_precision(model, "auto")
    assert (model.precision, model.precision_reason) == ("bf16", "injected")
    monkeypatch.setattr(precision_policy, "_resolved", {"cpu": PrecisionChoice("fp32", "x")})
    set_precision(model, "auto")
    assert model.precision == "fp32" and model._precision_hooks == []


# ---------------------------------------------------------------------- attention kernels
@pytest.fixture
def kernels():
    yield kernel_choice
    kernel_choice.set_kernel_choices(None)


def _long_inputs(dtype):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(1, 2, 300, 32, generator=gen).to(dtype) for _ in range(3)]


@pytest.mark.parametrize("kernel", ["fused", "blocked", "fused-fp32"])
def test_long_attention_uses_the_chosen_kernel(kernels, monkeypatch, kernel):
    used = []
    import napari_sam2.models.attention_kernels as ak

    real_chunked, real_fused = ak.chunked_attention, ak.F.scaled_dot_product_attention
    monkeypatch.setattr(ak, "chunked_attention",
                        lambda *a, **k: used.append("blocked") or real_chunked(*a, **k))
    monkeypatch.setattr(
        ak.F, "scaled_dot_product_attention",
        lambda q, *a, **k: used.append(f"fused-{q.dtype}") or real_fused(q, *a, **k),
    )
    monkeypatch.setattr(kernel_choice, "LONG_KEYS", 256)
    kernels.set_kernel_choices({"cpu:bfloat16": kernel})
    q, k, v = _long_inputs(torch.bfloat16)
    out = sdpa(q, k, v)
    expected = {"fused": "fused-torch.bfloat16", "blocked": "blocked",
                "fused-fp32": "fused-torch.float32"}[kernel]
    assert used == [expected] and out.dtype == torch.bfloat16
    exact = real_fused(q.double(), k.double(), v.double())
    assert (out.double() - exact).abs().max() < 2e-2


def test_short_attention_and_the_decoder_stay_fused(kernels):
    kernels.set_kernel_choices({"cpu:float32": "blocked", "cpu:bfloat16": "blocked"})
    window = torch.randn(64, 1, 64, 96)
    assert not kernel_choice.is_long(window, window)
    tokens, image = torch.randn(1, 8, 7, 16), torch.randn(1, 8, 4096, 16)
    assert not kernel_choice.is_long(tokens, image)  # few queries: the mask decoder
    assert kernel_choice.is_long(torch.randn(1, 1, 4096, 16), image)
    kind = kernel_choice.attention_kind
    assert kind(image, tokens) == "few-keys"  # image tokens to prompt tokens
    assert kind(tokens, image) is None and kind(window, window) is None
    assert kind(image, image) == "long"


def test_image_to_token_attention_uses_the_chosen_kernel(kernels, monkeypatch):
    import napari_sam2.models.attention_kernels as ak

    used = []
    real = ak.chunked_attention
    monkeypatch.setattr(ak, "chunked_attention", lambda *a, **k: used.append(1) or real(*a, **k))
    q, k = torch.randn(1, 8, 4096, 16), torch.randn(1, 8, 7, 16)
    kernels.set_kernel_choices({"cpu:float32:few-keys": "blocked"})
    out = sdpa(q, k, k)
    assert used == [1]
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, k))
    kernels.set_kernel_choices({"cpu:float32:few-keys": "fused"})
    sdpa(q, k, k)
    assert used == [1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_image_to_token_attention_keys_first_matches_the_fused_kernel(kernels, monkeypatch,
                                                                     dtype):
    import napari_sam2.models.attention_kernels as ak

    used = []
    real = ak.few_keys_attention
    monkeypatch.setattr(ak, "few_keys_attention", lambda *a, **k: used.append(1) or real(*a, **k))
    gen = torch.Generator().manual_seed(1)
    q = (3 * torch.randn(2, 8, 1024, 16, generator=gen)).to(dtype)
    k, v = (3 * torch.randn(2, 8, 7, 16, generator=gen)).to(dtype), torch.randn(2, 8, 7, 16)
    v = v.to(dtype)
    key = f"cpu:{str(dtype).removeprefix('torch.')}:few-keys"
    kernels.set_kernel_choices({key: "few-keys-fp32"})
    out = sdpa(q, k, v)
    assert used == [1] and out.dtype == dtype and out.shape == (2, 8, 1024, 16)
    exact = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double())
    # scores and softmax in float32: only the output's own rounding is left
    bound = 1e-5 if dtype == torch.float32 else 2 ** -8
    assert ((out.double() - exact).abs() <= bound * (1 + exact.abs())).all()


def test_kernel_choice_is_measured_once_and_kept(kernels, monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_SAM2_CACHE", str(tmp_path))
    monkeypatch.setattr(precision_policy, "_record", None)
    timed = []

    def fake_times(dtype, repeats=3, kind="long"):
        timed.append(dtype)
        if kind == "few-keys":
            return {"fused": 1.0, "fused-fp32": 3.0}
        return {"fused": 3.0, "blocked": 1.0, "fused-fp32": 2.0}

    monkeypatch.setattr(kernel_choice, "time_kernels", fake_times)
    kernels.set_kernel_choices(None)
    assert kernel_choice.long_attention_kernel("cpu", torch.bfloat16) == "blocked"
    assert kernel_choice.long_attention_kernel("cpu", torch.bfloat16) == "blocked"
    assert kernel_choice.long_attention_kernel("cuda", torch.bfloat16) == "fused"
    assert timed == [torch.bfloat16]
    assert kernel_choice.kernel_choices() == {"cpu:bfloat16": "blocked"}
    kernels.set_kernel_choices(None)  # a new process: read from the machine record
    assert kernel_choice.long_attention_kernel("cpu", torch.bfloat16) == "blocked"
    assert timed == [torch.bfloat16]
    assert kernel_choice.attention_kernel("cpu", torch.bfloat16, "few-keys") == "fused"
    assert kernel_choice.kernel_choices() == {"cpu:bfloat16": "blocked",
                                              "cpu:bfloat16:few-keys": "fused"}
    with pytest.raises(ValueError, match="unknown attention kernel"):
        kernels.set_kernel_choices({"cpu:float32": "magic"})
    with pytest.raises(ValueError, match="unknown attention kind"):
        kernel_choice.attention_kernel("cpu", torch.float32, "short")


def test_value_order_is_measured_once_and_kept(kernels, monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_SAM2_CACHE", str(tmp_path))
    monkeypatch.setattr(precision_policy, "_record", None)
    timed = []
    monkeypatch.setattr(kernel_choice, "time_value_orders",
                        lambda dtype: timed.append(dtype) or {"mix-first": 2.0,
                                                              "project-first": 1.0})
    assert kernel_choice.value_order("cpu", torch.float32) == "project-first"
    assert kernel_choice.value_order("cpu", torch.float32) == "project-first"
    assert kernel_choice.value_order("cuda", torch.float32) == "project-first"
    assert timed == [torch.float32]
    with pytest.raises(ValueError, match="unknown attention kernel"):
        kernels.set_kernel_choices({"values:cpu:float32": "blocked"})


def test_timing_the_value_orders_runs_both():
    times = kernel_choice.time_value_orders(torch.float32, repeats=1)
    assert set(times) == set(kernel_choice.VALUE_ORDERS) and all(t > 0 for t in times.values())


@pytest.mark.parametrize("kind", kernel_choice.KINDS)
def test_timing_the_candidates_runs_each(kernels, kind):
    times = kernel_choice.time_kernels(torch.float32, repeats=1, kind=kind)
    assert set(times) == ({"fused", "blocked"} if kind == "long"
                          else {"fused", "blocked", "few-keys-fp32"})
    assert all(t > 0 for t in times.values())
    bf16 = kernel_choice.time_kernels(torch.bfloat16, repeats=1, kind=kind)
    # With few keys, bfloat16 scores must stay in float32: no blocked kernel then.
    assert set(bf16) == ({"fused", "blocked", "fused-fp32"} if kind == "long"
                         else {"fused", "fused-fp32", "few-keys-fp32"})
