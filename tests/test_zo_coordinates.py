"""SparseCoordinates: flattening, canonical order, exact perturb/restore/update."""

from __future__ import annotations

import pytest
import torch

from meerkat_core.errors import MeerkatError, MeerkatInputError
from meerkat_core.zo import SparseCoordinates, derive_key, normal
from meerkat_core.zo.testing import random_mask, tiny_llama

IDS = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(5))


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def masked_flags(model, mask):
    """{name: bool tensor (param shape) True on masked coordinates}."""
    out = {}
    for n, p in model.named_parameters():
        f = torch.zeros(p.numel(), dtype=torch.bool)
        if n in mask:
            f[mask[n]] = True
        out[n] = f.view(p.shape)
    return out


def assert_state(model, coords, before, mask, dtype):
    """Unmasked weights bitwise as ``before``; masked ones == master.to(dtype)."""
    flags = masked_flags(model, mask)
    master = coords.split(coords.master)
    for n, p in model.named_parameters():
        f = flags[n]
        assert torch.equal(p.detach()[~f], before[n][~f]), n
        if n in mask:
            got = p.detach().reshape(-1)[mask[n]]
            assert torch.equal(got, master[n].to(dtype)), n


def test_flatten_keeps_outputs_and_ties():
    model = tiny_llama()
    ref = logits(model)
    mask = random_mask(model, 500)
    coords = SparseCoordinates(model, mask)
    assert coords.flattened and coords.n_segments == 1
    emb, head = model.model.embed_tokens.weight, model.lm_head.weight
    assert emb is head
    assert emb.data_ptr() == head.data_ptr()
    assert torch.equal(logits(model), ref)
    # all parameters owning coordinates now view one storage
    ptrs = {p.untyped_storage().data_ptr() for n, p in model.named_parameters() if n in mask}
    assert len(ptrs) == 1
    # a write through the buffer reaches both the embedding and the head
    with torch.no_grad():
        emb[3, 4] = 7.0
    assert model.lm_head.weight[3, 4].item() == 7.0


def test_canonical_order_and_split_concat():
    model = tiny_llama()
    mask = random_mask(model, 300)
    expected = torch.cat([p.detach().reshape(-1)[mask[n]] for n, p in model.named_parameters() if n in mask])
    coords = SparseCoordinates(model, mask)
    assert coords.k == 300 and coords.d == sum(p.numel() for p in model.parameters())
    assert torch.equal(coords.values(), expected)
    assert [s.name for s in coords.spans] == [n for n, _ in model.named_parameters() if n in mask]
    parts = coords.split(coords.values())
    params = dict(model.named_parameters())
    assert all(torch.equal(parts[n], params[n].detach().reshape(-1)[mask[n]]) for n in parts)
    assert torch.equal(coords.concat(parts), coords.values())
    assert all(torch.equal(coords.indices_by_name()[n], mask[n]) for n in mask)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("flatten", [True, False])
def test_restore_exact_after_many_cycles(dtype, flatten):
    model = tiny_llama(dtype=dtype)
    mask = random_mask(model, 700, seed=1)
    before = snapshot(model)
    coords = SparseCoordinates(model, mask, flatten=flatten, carriers=False)  # rounded writes (carriers: test_zo_carriers)
    assert coords.flattened == flatten
    x0 = coords.values()
    for t in range(50):
        key = derive_key(0, 0, 0, t)
        coords.perturb_key(key, 1e-2)
        coords.perturb_key(key, -1e-2)
        coords.restore()
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), before[n]), n
    # after updates: unmasked untouched, masked == master.to(dtype)
    for t in range(10):
        coords.update_key(derive_key(0, 1, 0, t), 1e-2, 0.5)
    assert not torch.equal(coords.values(), x0)
    assert_state(model, coords, before, mask, dtype)
    for t in range(5):
        coords.perturb_key(derive_key(0, 2, 0, t), 3e-2)
        coords.restore()
    assert_state(model, coords, before, mask, dtype)


def test_perturb_touches_only_masked_coordinates():
    model = tiny_llama()
    mask = random_mask(model, 400, seed=2)
    before = snapshot(model)
    coords = SparseCoordinates(model, mask)
    key = derive_key(9, 9, 9, 9)
    coords.perturb_key(key, 1e-2)
    z = normal(key, coords.k)
    assert torch.equal(coords.z_for(key), z)
    flags = masked_flags(model, mask)
    expected = coords.split(torch.add(coords.master, z, alpha=1e-2))
    for n, p in model.named_parameters():
        assert torch.equal(p.detach()[~flags[n]], before[n][~flags[n]]), n
        if n in mask:
            assert torch.equal(p.detach().reshape(-1)[mask[n]], expected[n]), n
            assert not torch.equal(p.detach()[flags[n]], before[n][flags[n]]), n
    coords.restore()
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), before[n])


def test_perturb_tensor_equals_perturb_key():
    model = tiny_llama()
    coords = SparseCoordinates(model, random_mask(model, 200))
    key = derive_key(1, 2, 3, 4)
    coords.perturb_key(key, 0.1)
    a = snapshot(model)
    coords.perturb(normal(key, coords.k), 0.1)
    assert all(torch.equal(a[n], p) for n, p in model.named_parameters())


def test_mixed_dtypes_use_several_segments():
    model = tiny_llama(dtype=torch.bfloat16)
    for n, p in model.named_parameters():
        if "norm" in n:
            p.data = p.data.float()
    mask = random_mask(model, 600, seed=3)
    assert any("norm" in n for n in mask)
    before = snapshot(model)
    coords = SparseCoordinates(model, mask)
    assert coords.flattened and coords.n_segments > 1
    for t in range(10):
        coords.perturb_key(derive_key(0, 0, 0, t), 0.05)
        coords.restore()
    assert all(torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())
    coords.update_key(derive_key(0, 0, 0, 99), 0.1, 1.0)
    for n, p in model.named_parameters():
        f = masked_flags(model, mask)[n]
        assert torch.equal(p.detach()[~f], before[n][~f])
        if n in mask:
            assert torch.equal(p.detach().reshape(-1)[mask[n]], coords.split(coords.master)[n].to(p.dtype))


def test_alias_of_tied_weight():
    model = tiny_llama()
    coords = SparseCoordinates(model, {"lm_head.weight": torch.tensor([0, 5, 9])})
    assert [s.name for s in coords.spans] == ["model.embed_tokens.weight"]
    with pytest.raises(MeerkatInputError, match="twice"):
        SparseCoordinates(tiny_llama(), {"lm_head.weight": [1], "model.embed_tokens.weight": [2]})


@pytest.mark.parametrize(
    "mask,match",
    [
        ({"nope.weight": [1]}, "not parameters"),
        ({"model.norm.weight": [3, 1]}, "increasing"),
        ({"model.norm.weight": [1, 1]}, "increasing"),
        ({"model.norm.weight": [32]}, r"\[0, 32\)"),
        ({"model.norm.weight": [-1]}, r"\[0, 32\)"),
        ({"model.norm.weight": [0.5]}, "integers"),
        ({"model.norm.weight": []}, "k = 0"),
    ],
)
def test_bad_masks(mask, match):
    with pytest.raises(MeerkatInputError, match=match):
        SparseCoordinates(tiny_llama(), mask)


def test_check_layout_detects_moved_model():
    model = tiny_llama()
    coords = SparseCoordinates(model, random_mask(model, 50))
    coords.check_layout()
    model.to(torch.float64)
    with pytest.raises(MeerkatError, match="re-allocated"):
        coords.check_layout()


def test_set_values_and_values_copy():
    model = tiny_llama(dtype=torch.bfloat16)
    mask = random_mask(model, 100)
    before = snapshot(model)
    coords = SparseCoordinates(model, mask, carriers=False)
    v = coords.values()
    v += 1.0
    assert not torch.equal(v, coords.master)
    coords.set_values(v)
    assert torch.equal(coords.master, v)
    assert_state(model, coords, before, mask, torch.bfloat16)


def test_full_mode_and_pieces():
    model = tiny_llama()
    before = snapshot(model)
    coords = SparseCoordinates(model, None)
    assert coords.full and coords.k == coords.d
    key = derive_key(3, 0, 0, 0)
    coords.perturb_key(key, 1e-3)
    changed = sum(int((p.detach() != before[n]).sum()) for n, p in model.named_parameters())
    assert changed >= coords.d - 5  # a z_i that leaves a weight unchanged in fp32 is very rare
    coords.restore()
    assert all(torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())
    coords.update_key(key, 1e-2, 1.0)
    after = snapshot(model)
    assert all(not torch.equal(after[n], before[n]) for n in after)

    # the same on a piecewise path (z redrawn per piece, never held whole) gives the same bits
    model2 = tiny_llama()
    coords2 = SparseCoordinates(model2, None, z_cache_limit=100, chunk=1000)
    coords2.perturb_key(key, 1e-3)
    model3 = tiny_llama()
    coords3 = SparseCoordinates(model3, None)
    coords3.perturb_key(key, 1e-3)
    assert all(torch.equal(p, q) for p, q in zip(model2.parameters(), model3.parameters()))
    coords2.restore()
    coords2.update_key(key, 1e-2, 1.0)
    assert torch.equal(coords2.master, coords.master)
    assert all(torch.equal(p.detach(), after[n]) for n, p in model2.named_parameters())


def test_unflatten():
    model = tiny_llama()
    mask = random_mask(model, 100)
    coords = SparseCoordinates(model, mask)
    coords.update_key(derive_key(0, 0, 0, 0), 0.1, 1.0)
    state = snapshot(model)
    coords.unflatten()
    assert not coords.flattened
    ptrs = [p.untyped_storage().data_ptr() for p in model.parameters()]
    assert len(set(ptrs)) == len(ptrs)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert all(torch.equal(p.detach(), state[n]) for n, p in model.named_parameters())
    coords.perturb_key(derive_key(0, 0, 0, 1), 0.1)
    coords.restore()
    assert all(torch.equal(p.detach(), state[n]) for n, p in model.named_parameters())


def test_rebuild_on_flattened_model_and_aliased_params():
    model = tiny_llama()
    mask = random_mask(model, 100)
    first = SparseCoordinates(model, mask)
    second = SparseCoordinates(model, mask)  # views of the first buffer do not overlap: flattened again
    assert second.flattened and second.n_segments == 1
    assert torch.equal(first.values(), second.values())
    with pytest.raises(MeerkatError):
        first.check_layout()
    # two distinct Parameters over the same memory keep their aliasing (per-tensor path for them)
    model = tiny_llama()
    q = model.model.layers[0].self_attn.q_proj
    o = model.model.layers[0].self_attn.o_proj
    o.weight = torch.nn.Parameter(q.weight.data)  # same storage, same range
    names = ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.o_proj.weight"]
    coords = SparseCoordinates(model, {names[0]: [0, 1], names[1]: [2, 3], "model.norm.weight": [0]})
    coords.perturb(torch.ones(coords.k), 1.0)
    assert q.weight.data_ptr() == o.weight.data_ptr()
    assert torch.equal(q.weight, o.weight)


def test_unmasked_weights_leave_a_memory_mapped_checkpoint(tmp_path):
    """Weights loaded from safetensors are views of one mmap; after flattening, the parameters that
    own no coordinate get storage of their own too, so the mapping (and its resident pages) can go:
    otherwise resident memory holds the weights twice (benchmarks/memory.py)."""
    from transformers import AutoModelForCausalLM

    tiny_llama().save_pretrained(str(tmp_path))
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path))
    first = next(iter(dict(model.named_parameters()).keys()))
    before = snapshot(model)
    ptrs = {n: p.untyped_storage().data_ptr() for n, p in model.named_parameters()}
    coords = SparseCoordinates(model, {first: torch.tensor([0, 3])})
    assert coords.flattened
    for n, p in model.named_parameters():
        assert p.untyped_storage().data_ptr() != ptrs[n], n  # nothing points into the old storage
        assert torch.equal(p, before[n]), n
