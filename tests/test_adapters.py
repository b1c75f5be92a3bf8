"""Every agent's adapter in one stacked layer: equal to PEFT's LoRA, isolated per row, saved in PEFT format."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from agents.llm import LLM
from agents.lora import ADAPTER_CONFIG, LoraSpec

SPEC = LoraSpec(rank=4, alpha=8.0, target_modules=("q_proj", "v_proj", "down_proj"), layers=(1,))
TOLERANCE = 1e-5  # fp32: the stacked and PEFT forms sum the same products in another order


def _llm(model_dir, agents: int = 3, spec: LoraSpec = SPEC) -> LLM:
    llm = LLM.load(str(model_dir), device="cpu", dtype="float32")
    llm.attach_adapters(agents, spec)
    return llm


def _randomise(llm: LLM, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in llm.adapters.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)


def _ids(llm: LLM) -> torch.Tensor:
    texts = [llm.chat_prompt("You are an investor.", f"Day {day}: what happens to the market?") for day in range(3)]
    return llm.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def test_fresh_adapters_leave_the_outputs_of_the_base_model(tiny_model_dir):
    llm = _llm(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    encoded = _ids(llm)
    with torch.no_grad(), llm.route([0, 1, 2]):
        adapted = llm.model(**encoded).logits
    assert torch.equal(adapted, base(**encoded).logits)
    assert all(float(llm.adapters.layers[name].lora_B.detach().abs().max()) == 0.0 for name in llm.adapters.layers)


def test_fresh_adapters_are_the_same_in_every_run_and_leave_the_global_rng_alone(tiny_model_dir):
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first, second = _llm(tiny_model_dir), _llm(tiny_model_dir)
    assert torch.rand(1) == before
    assert all(torch.equal(a, b) for a, b in zip(first.adapters.parameters(), second.adapters.parameters()))


def test_outputs_and_gradients_equal_peft_for_the_same_adapter(tiny_model_dir):
    llm = _llm(tiny_model_dir)
    _randomise(llm)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                          LoraConfig(r=SPEC.rank, lora_alpha=SPEC.alpha, target_modules=list(SPEC.target_modules), layers_to_transform=list(SPEC.layers), lora_dropout=0.0))
    state = {key.replace(".lora_A.weight", ".lora_A.default.weight").replace(".lora_B.weight", ".lora_B.default.weight"): value
             for key, value in llm.adapters.agent_state(1).items()}
    missing = peft.load_state_dict(state, strict=False)
    assert not [key for key in missing.missing_keys if "lora_" in key]
    encoded = _ids(llm)
    with llm.route([1, 1, 1]):
        ours = llm.model(**encoded).logits
    theirs = peft(**encoded).logits
    assert torch.allclose(ours, theirs, atol=TOLERANCE)
    ours.square().mean().backward()
    theirs.square().mean().backward()
    for name, layer in llm.adapters.layers.items():
        peft_layer = peft.get_submodule("base_model.model." + name)
        assert torch.allclose(layer.lora_A.grad[1], peft_layer.lora_A["default"].weight.grad, atol=TOLERANCE)
        assert torch.allclose(layer.lora_B.grad[1], peft_layer.lora_B["default"].weight.grad, atol=TOLERANCE)
        assert float(layer.lora_A.grad[0].abs().max()) == 0.0 and float(layer.lora_A.grad[2].abs().max()) == 0.0  # other agents get nothing


@pytest.mark.parametrize("grad,tokens", [(False, "all"), (True, "all"), (False, "one")], ids=["no-grad", "grad", "one-token"])
def test_one_agents_adapter_never_changes_another_agents_outputs(tiny_model_dir, grad, tokens):
    """Also for one token per row without gradients: the shape of a decoding step, which a CPU
    runs through the decoding kernel where it is built."""
    llm = _llm(tiny_model_dir)
    _randomise(llm)
    encoded = _ids(llm)
    if tokens == "one":
        encoded = {"input_ids": encoded["input_ids"][:, -1:], "attention_mask": encoded["attention_mask"][:, -1:]}
    with torch.set_grad_enabled(grad), llm.route([0, 2, -1]):
        before = llm.model(**encoded).logits.detach()
    with torch.no_grad():
        for param in llm.adapters.parameters():
            param[1].add_(1.0)  # agent 1's adapter changes; no row runs as agent 1
    with torch.set_grad_enabled(grad), llm.route([0, 2, -1]):
        after = llm.model(**encoded).logits.detach()
    assert torch.equal(before, after)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        assert torch.allclose(after[2], base(**encoded).logits[2], atol=1e-6)  # the row without an adapter is the base model
        assert not torch.allclose(after[0], base(**encoded).logits[0], atol=1e-3)  # the others' adapters did act


def test_a_mixed_batch_equals_each_agent_alone(tiny_model_dir):
    llm = _llm(tiny_model_dir)
    _randomise(llm)
    encoded = _ids(llm)
    with torch.no_grad():
        with llm.route([2, 0, 1]):
            mixed = llm.model(**encoded).logits
        for row, agent in enumerate([2, 0, 1]):
            with llm.route([agent] * 3):
                assert torch.allclose(mixed[row], llm.model(**encoded).logits[row], atol=TOLERANCE)


def test_a_contiguous_run_of_agents_reads_the_stack_as_the_gather_and_the_gradient_path_do(tiny_model_dir):
    llm = _llm(tiny_model_dir, agents=5)
    _randomise(llm)
    encoded = _ids(llm)
    cpu = torch.device("cpu")
    with llm.route([1, 2, 3]):
        assert llm.adapters.router.routing(cpu, grad=False).span == (1, 4)  # a slice of the stack, nothing gathered
        with torch.no_grad():
            sliced = llm.model(**encoded).logits
        with_grad = llm.model(**encoded).logits.detach()  # the one-hot path that training uses
    assert torch.allclose(sliced, with_grad, atol=TOLERANCE)
    with torch.no_grad():
        for row, agent in enumerate([1, 2, 3]):
            with llm.route([agent] * 3):
                assert llm.adapters.router.routing(cpu, grad=False).span is None  # gathered
                assert torch.allclose(sliced[row], llm.model(**encoded).logits[row], atol=TOLERANCE)
        with llm.route([1, 2, 4]):
            other = llm.model(**encoded).logits
    assert torch.allclose(sliced[:2], other[:2], atol=TOLERANCE) and not torch.allclose(sliced[2], other[2], atol=TOLERANCE)


def test_a_saved_adapter_loads_with_peft_and_back_with_the_same_outputs(tiny_model_dir, tmp_path):
    llm = _llm(tiny_model_dir)
    _randomise(llm)
    folder = llm.adapters.save_agent(2, tmp_path / "agent_2", base_model=str(tiny_model_dir))
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    assert config["r"] == SPEC.rank and config["lora_alpha"] == SPEC.alpha and config["layers_to_transform"] == list(SPEC.layers)
    encoded = _ids(llm)
    with torch.no_grad(), llm.route([2, 2, 2]):
        ours = llm.model(**encoded).logits
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(folder))
    with torch.no_grad():
        assert torch.allclose(peft(**encoded).logits, ours, atol=TOLERANCE)
    other = _llm(tiny_model_dir)
    other.adapters.load_agent(0, folder)
    with torch.no_grad(), other.route([0, 0, 0]):
        assert torch.equal(other.model(**encoded).logits, ours)


def test_loading_an_adapter_of_another_shape_is_refused(tiny_model_dir, tmp_path):
    llm = _llm(tiny_model_dir)
    folder = llm.adapters.save_agent(0, tmp_path / "agent_0")
    other = _llm(tiny_model_dir, spec=LoraSpec(4, 8.0, ("q_proj",)))
    with pytest.raises(ValueError, match="do not fit"):
        other.adapters.load_agent(0, folder)


def test_identity_adapters_are_skipped_without_gradients_until_their_B_changes(tiny_model_dir):
    """Rows of an agent whose every B is zero (fresh or reset) cost nothing extra without
    gradients: the router leaves them out, which changes no output (their LoRA term is exactly 0).
    Writing an agent's B (an optimizer step, a load) brings its rows back at once."""
    llm = _llm(tiny_model_dir)
    encoded = _ids(llm)
    router = llm.adapters.router
    assert llm.adapters.identity().tolist() == [True, True, True]
    with torch.no_grad(), llm.route([0, 1, 2]):
        llm.model(**encoded)
        assert router.routing(llm.device, grad=False) is None  # nothing left to route
        assert router.routing(llm.device, grad=True) is not None  # gradients still reach every row
    with torch.no_grad():
        next(iter(llm.adapters.layers.values())).lora_B[1].fill_(0.5)
    assert llm.adapters.identity().tolist() == [True, False, True]
    with torch.no_grad(), llm.route([0, 1, 2]):
        adapted = llm.model(**encoded).logits
        assert router.routing(llm.device, grad=False).rows.tolist() == [-1, 1, -1]
    with torch.no_grad(), llm.route([-1, -1, -1]):
        base = llm.model(**encoded).logits
    assert torch.equal(adapted[0], base[0]) and torch.equal(adapted[2], base[2])
    assert not torch.allclose(adapted[1], base[1])
    llm.adapters.reset(1)
    assert llm.adapters.identity().tolist() == [True, True, True]


def test_a_bf16_models_adapters_are_cast_once_and_again_after_every_write(tiny_model_dir):
    """Without gradients a bf16 model reads a bf16 copy of the fp32 stacks, cast once per change
    of the weights (not per layer and token); writing a B is seen at once."""
    llm = LLM.load(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    llm.attach_adapters(3, SPEC)
    _randomise(llm)
    encoded = _ids(llm)
    layer = next(iter(llm.adapters.layers.values()))

    def logits(grad: bool) -> torch.Tensor:
        with torch.set_grad_enabled(grad), llm.route([0, 1, 2]):
            return llm.model(**encoded).logits.detach()

    first = logits(False)
    cast = layer.inference_weights(torch.bfloat16)
    assert cast[0].dtype == torch.bfloat16 and cast[0] is layer.inference_weights(torch.bfloat16)[0]  # cached
    assert torch.equal(first, logits(True))  # the gradient path casts afresh: the same numbers
    with torch.no_grad():
        layer.lora_B.mul_(3.0)
    assert layer.inference_weights(torch.bfloat16)[0] is not cast[0]
    second = logits(False)
    assert not torch.equal(first, second) and torch.equal(second, logits(True))


BF16_ULP = 2.0**-7  # bf16 keeps 8 significant bits: one unit in the last place is at most 2^-7 of the value


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "bmm"])
def test_a_bf16_models_one_token_steps_on_a_cpu_add_the_lora_term_in_float32(tiny_model_dir, monkeypatch, kernel):
    """A decoding step (one token per row) of a bf16 model on a CPU computes the LoRA term from
    the float32 masters and rounds the sum into bf16 once, with the fused kernel or, where it
    cannot be built, with two batched matmuls; a step of several tokens per row uses the bf16
    copy. All are the same adapter, so they agree to bf16 rounding."""
    if kernel:
        _kernel_or_skip()
    else:
        monkeypatch.setattr("agents.lora.decoding_kernel", lambda: None)
    llm = LLM.load(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    llm.attach_adapters(3, SPEC)
    _randomise(llm)
    layer = next(iter(llm.adapters.layers.values()))
    x = torch.randn((3, 1, layer.base.in_features), generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    with torch.no_grad(), llm.route([2, 0, 1]):
        step = layer(x)
        several = layer(x.expand(3, 4, -1))[:, :1]
    a, b = layer.lora_A[[2, 0, 1]].detach(), layer.lora_B[[2, 0, 1]].detach()
    if kernel:  # the bf16 copy of the stacks, summed in float32: within one bf16 unit in the last place
        a, b = a.to(torch.bfloat16).float(), b.to(torch.bfloat16).float()
    in_float32 = (layer.base(x).float() + layer.scaling * (x.float() @ a.transpose(1, 2)) @ b.transpose(1, 2)).to(torch.bfloat16)
    assert step.dtype == torch.bfloat16
    if kernel:
        torch.testing.assert_close(step.float(), in_float32.float(), rtol=BF16_ULP, atol=1e-6)
    else:  # the float32 masters, by batched matmuls: exactly that sum
        assert torch.equal(step, in_float32)
    assert not torch.equal(several, in_float32)  # the bf16 path rounds x A to bf16 first
    torch.testing.assert_close(several.float(), step.float(), rtol=0.05, atol=0.05)


def _kernel_or_skip():
    from agents.lora_kernel import decoding_kernel

    built = decoding_kernel()
    if built is None:
        pytest.skip("the decoding kernel cannot be built here (no C++ compiler, or LLM_MARKET_SIM_LORA_KERNEL=0); layers use the bmm path, tested beside")
    return built


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_decoding_kernel_adds_each_rows_own_lora_term_and_leaves_rows_without_one(dtype):
    """agents.lora_kernel: y += scaling * B[agent] A[agent] x per row, summed in float32, for
    agents in any order and repeated; a row of agent -1 is not touched. Odd sizes reach the
    vector loops' tails."""
    kernel = _kernel_or_skip()
    generator = torch.Generator().manual_seed(0)
    agents, rank, d_in, d_out, scaling = 4, 8, 77, 131, 2.0
    a = (torch.randn((agents, rank, d_in), generator=generator) / d_in**0.5).to(dtype)
    b = (torch.randn((agents, d_out, rank), generator=generator) * 0.1).to(dtype)
    x = torch.randn((5, 1, d_in), generator=generator).to(dtype)
    y = torch.randn((5, 1, d_out), generator=generator).to(dtype)
    rows = torch.tensor([3, -1, 0, 3, 1])
    out = y.clone()
    kernel(out, x, a, b.transpose(1, 2).contiguous(), rows, scaling)
    expected = y.double().clone()
    for row, agent in enumerate(rows.tolist()):
        if agent >= 0:
            expected[row] += scaling * (x[row].double() @ a[agent].double().T) @ b[agent].double().T
    assert torch.equal(out[1], y[1])
    assert float((expected - y.double()).abs().min(dim=-1).values.max()) > 0  # every adapted row did move
    if dtype == torch.float32:
        torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)
    else:  # the float32 sum of bf16 products rounded once: within one bf16 unit in the last place of the exact value
        torch.testing.assert_close(out.double(), expected, rtol=BF16_ULP, atol=1e-6)


def test_the_adapter_passes_benchmark_times_real_decoding_steps_of_the_stacked_adapters(tiny_model_dir):
    """benchmarks/adapter_passes.py: its decoding steps on the prompts' cache give what one pass
    over the prompts and the fed tokens gives, under each row's adapter."""
    from benchmarks.adapter_passes import passes

    llm = _llm(tiny_model_dir, agents=3)
    _randomise(llm)
    texts = [llm.chat_prompt("You are an investor.", "Day " + "x " * day + "?") for day in range(3)]  # unequal lengths: left padding
    timed = passes(llm, texts, [2, 0, 1], steps=2, keep_hidden=True)
    encoded = llm.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    token = encoded.input_ids[0, -1]
    ids = torch.cat([encoded.input_ids, torch.full((3, 2), int(token))], dim=1)
    mask = torch.cat([encoded.attention_mask, torch.ones((3, 2), dtype=torch.long)], dim=1)
    with torch.no_grad():
        whole, _ = llm.run(ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), rows=[2, 0, 1])
        base, _ = llm.run(ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), rows=None)
    assert torch.allclose(timed["hidden"][:, -1], whole[:, -1], atol=1e-4)
    assert not torch.allclose(whole[:, -1], base[:, -1], atol=1e-3)  # the adapters did act
    assert timed["prompt_tokens"] == int(encoded.attention_mask.sum()) and timed["prompt_pass_s"] > 0 and timed["decoding_step_s"] > 0


def test_the_decoding_kernel_is_off_when_switched_off_and_a_failed_build_falls_back_to_bmm_with_a_warning(monkeypatch):
    import torch.utils.cpp_extension

    from agents import lora_kernel

    monkeypatch.setenv(lora_kernel.SWITCH, "0")
    assert lora_kernel.decoding_kernel() is None and lora_kernel.decoding_path(torch.device("cpu")) == "bmm"

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Error building extension 'llm_market_sim_lora': c++: command not found")

    monkeypatch.setattr(torch.utils.cpp_extension, "load_inline", no_compiler)
    with pytest.warns(RuntimeWarning, match="could not be built .*command not found.*bmm is used instead"):
        assert lora_kernel._build.__wrapped__() is None
