"""Mask computation checked against brute force on a tiny LLaMA (exact top-k, exact mean gradient)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from meerkat_core.errors import MeerkatInputError
from meerkat_core.hashing import model_fingerprint
from meerkat_core.mask import compute_mask, k_for_density, topk_exact, validate_density
from meerkat_core.mask import select as select_mod
from meerkat_core.mask.select import global_topk, random_global, split_global

VOCAB = 128


def tiny_model(tie: bool = True, seed: int = 0) -> transformers.LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=tie,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.requires_grad_(False)  # as load_model leaves it: compute_mask must turn gradients on itself
    return model


def batches(n_batches: int = 3, batch: int = 2, seq: int = 12, high: int = VOCAB, seed: int = 7) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, high, (batch, seq), generator=g) for _ in range(n_batches)]


def brute_force_stats(model: torch.nn.Module, data: list[torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Independent reference: per batch backprop, accumulate sum g and sum g*g in float32, divide by n."""
    named = dict(model.named_parameters())
    for p in named.values():
        p.requires_grad_(True)
    sums = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in named.items()}
    sqs = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in named.items()}
    for b in data:
        model.zero_grad(set_to_none=True)
        model(input_ids=b, labels=b).loss.backward()
        for n, p in named.items():
            g = p.grad.float()
            sums[n] += g
            sqs[n] += g * g
    model.zero_grad(set_to_none=True)
    for p in named.values():
        p.requires_grad_(False)
    return {n: (sums[n] / len(data), sqs[n] / len(data)) for n in named}


def brute_topk(scores: dict[str, torch.Tensor], k: int) -> dict[str, np.ndarray]:
    """Full sort of the concatenated scores by (score desc, global index asc); per-tensor sorted indices."""
    names = list(scores)
    flat = np.concatenate([scores[n].reshape(-1).double().numpy() for n in names])
    gidx = np.arange(flat.size)
    order = np.lexsort((gidx, -flat))[:k]
    chosen = np.sort(order)
    out, offset = {}, 0
    for n in names:
        size = scores[n].numel()
        sel = chosen[(chosen >= offset) & (chosen < offset + size)] - offset
        out[n] = sel
        offset += size
    return out


def assert_matches(mask, expected_idx: dict[str, np.ndarray], gbar: dict[str, torch.Tensor] | None) -> None:
    assert list(mask.tensors) == list(expected_idx)
    for name, t in mask.tensors.items():
        assert t.indices.dtype == torch.int64
        np.testing.assert_array_equal(t.indices.numpy(), expected_idx[name], err_msg=name)
        if gbar is not None:
            ref = gbar[name].reshape(-1)[t.indices]
            assert torch.allclose(t.grad_mean, ref, rtol=0, atol=1e-6), name
            assert t.grad_mean.dtype == torch.float32


@pytest.mark.parametrize("density", [1e-3, 0.02, 0.3])
def test_sensitivity_is_exact_global_topk(density: float) -> None:
    model, data = tiny_model(), batches()
    ref = brute_force_stats(model, data)
    mask = compute_mask(model, data, density=density, method="sensitivity", model_name="tiny")
    d = sum(p.numel() for p in model.parameters())
    k = max(1, round(density * d))
    assert mask.k == k == mask.meta.k and mask.meta.d == d
    expected = brute_topk({n: msq for n, (_, msq) in ref.items()}, k)
    assert_matches(mask, expected, {n: g for n, (g, _) in ref.items()})
    for name, t in mask.tensors.items():  # the stored score is the mean squared gradient
        assert torch.allclose(t.score, ref[name][1].reshape(-1)[t.indices], rtol=0, atol=1e-9)
    assert mask.meta.fingerprint == model_fingerprint(model)
    assert mask.meta.n_batches == 3 and mask.meta.grad_stats == "mean_over_batches"
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())  # left as found


def test_sensitivity_ties_at_zero_break_by_smaller_global_index() -> None:
    # Untied model, tokens only from the lower half of the vocabulary: the other embedding rows get an
    # exactly zero gradient, so a k beyond the nonzero count must take zeros by smallest global index.
    model, data = tiny_model(tie=False), batches(high=VOCAB // 2)
    ref = brute_force_stats(model, data)
    scores = {n: msq for n, (_, msq) in ref.items()}
    nonzero = int(sum((s != 0).sum() for s in scores.values()))
    d = sum(s.numel() for s in scores.values())
    k = nonzero + 137
    assert k < d
    mask = compute_mask(model, data, density=k / d, method="sensitivity")
    assert mask.k == k
    assert_matches(mask, brute_topk(scores, k), {n: g for n, (g, _) in ref.items()})
    emb = mask.tensors["model.embed_tokens.weight"]
    assert (emb.score == 0).sum() > 0  # the cut really falls inside the zero tie


def test_magnitude_is_exact_topk_of_abs_weight_with_ties() -> None:
    model, data = tiny_model(), batches()
    with torch.no_grad():  # integer-valued weights: massive ties, across tensors too
        g = torch.Generator().manual_seed(3)
        for p in model.parameters():
            p.copy_(torch.randint(-3, 4, p.shape, generator=g).float())
    ref = brute_force_stats(model, data)
    for density in (0.01, 0.2, 0.5):
        mask = compute_mask(model, data, density=density, method="magnitude")
        scores = {n: p.detach().abs() for n, p in model.named_parameters()}
        k = max(1, round(density * sum(s.numel() for s in scores.values())))
        assert_matches(mask, brute_topk(scores, k), {n: g for n, (g, _) in ref.items()})
        for name, t in mask.tensors.items():
            assert torch.equal(t.score, scores[name].reshape(-1)[t.indices])
        assert mask.meta.score == "abs_weight"


def test_magnitude_without_corpus_has_zero_grad_mean() -> None:
    model = tiny_model()
    mask = compute_mask(model, None, density=0.05, method="magnitude")
    assert mask.meta.grad_stats == "none" and mask.meta.n_batches == 0
    assert all(float(t.grad_mean.abs().sum()) == 0 for t in mask.tensors.values())


def test_random_is_k_distinct_sorted_and_seeded() -> None:
    model, data = tiny_model(), batches()
    ref = brute_force_stats(model, data)
    d = sum(p.numel() for p in model.parameters())
    a = compute_mask(model, data, density=0.01, method="random", seed=11)
    b = compute_mask(model, data, density=0.01, method="random", seed=11)
    c = compute_mask(model, data, density=0.01, method="random", seed=12)
    k = round(0.01 * d)
    assert a.k == k
    for (name, t), tb in zip(a.tensors.items(), b.tensors.values()):
        assert torch.equal(t.indices, tb.indices)
        if t.k > 1:
            assert bool((t.indices[1:] > t.indices[:-1]).all())
        assert torch.allclose(t.grad_mean, ref[name][0].reshape(-1)[t.indices], rtol=0, atol=1e-6)
        assert torch.allclose(t.score, ref[name][1].reshape(-1)[t.indices], rtol=0, atol=1e-9)
    assert any(not torch.equal(x.indices, y.indices) for x, y in zip(a.tensors.values(), c.tensors.values()))


def test_random_global_edge_cases() -> None:
    for d, k in [(10, 1), (10, 5), (10, 6), (10, 9), (10, 10), (1000, 999)]:
        r = random_global(d, k, seed=0)
        assert r.numel() == k and torch.equal(r, torch.unique(r)) and int(r.min()) >= 0 and int(r.max()) < d
        assert torch.equal(r, random_global(d, k, seed=0))


def test_density_one_keeps_everything() -> None:
    model, data = tiny_model(), batches(n_batches=1)
    mask = compute_mask(model, data, density=1.0)
    for name, p in model.named_parameters():
        assert torch.equal(mask.tensors[name].indices, torch.arange(p.numel()))


@pytest.mark.parametrize("bad", [0, -1, 1.5, float("nan"), "x"])
def test_bad_density_is_an_input_error(bad: object) -> None:
    with pytest.raises(MeerkatInputError, match="density"):
        validate_density(bad)  # type: ignore[arg-type]
    with pytest.raises(MeerkatInputError, match="density"):
        compute_mask(tiny_model(), None, density=bad, method="random")  # type: ignore[arg-type]


def test_bad_method_and_missing_corpus() -> None:
    with pytest.raises(MeerkatInputError, match="method"):
        compute_mask(tiny_model(), None, density=0.1, method="fisher")
    with pytest.raises(MeerkatInputError, match="corpus"):
        compute_mask(tiny_model(), None, density=0.1, method="sensitivity")


def test_exclude_globs_and_regexes() -> None:
    model, data = tiny_model(), batches(n_batches=1)
    mask = compute_mask(model, data, density=0.05, exclude=["*embed_tokens*", "re:layers\\.1\\..*norm"])
    names = set(mask.tensors)
    assert "model.embed_tokens.weight" not in names
    assert "model.layers.1.input_layernorm.weight" not in names
    assert "model.layers.0.input_layernorm.weight" in names
    d = sum(p.numel() for n, p in model.named_parameters() if n in names)
    assert mask.meta.d == d and mask.k == k_for_density(0.05, d)
    assert mask.meta.exclude == ("*embed_tokens*", "re:layers\\.1\\..*norm")
    with pytest.raises(MeerkatInputError, match="exclude every parameter"):
        compute_mask(model, data, density=0.05, exclude=["*"])


class _DenseReference:
    """The algorithm before the streamed passes (kept as the reference): two dense float32 accumulators
    (sum g, sum g*g), filled from every parameter's .grad after each backward, then divided by n."""

    @staticmethod
    def mask(model, data, density: float, method: str = "sensitivity", seed: int = 0, exclude=()):
        from meerkat_core.mask.compute import eligible_parameters
        from meerkat_core.mask.types import k_for_density

        params = eligible_parameters(model, exclude)
        numels = [p.numel() for _, p in params]
        k = k_for_density(density, sum(numels))
        flags = [p.requires_grad for p in model.parameters()]
        for _, p in params:
            p.requires_grad_(True)
        s = [torch.zeros(p.shape, dtype=torch.float32) for _, p in params]
        sq = [torch.zeros(p.shape, dtype=torch.float32) for _, p in params]
        n = 0
        with torch.enable_grad():
            for b in data:
                model(input_ids=b, labels=b).loss.backward()
                for (_, p), acc, acc_sq in zip(params, s, sq):
                    if p.grad is None:
                        continue
                    g = p.grad.detach().to(torch.float32)
                    acc.add_(g)
                    g.mul_(g)
                    acc_sq.add_(g)
                    p.grad = None
                n += 1
        for acc, acc_sq in zip(s, sq):
            acc.div_(n)
            acc_sq.div_(n)
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
        with torch.no_grad():
            if method == "sensitivity":
                chosen = global_topk(lambda j: sq[j], numels, k)
            elif method == "magnitude":
                chosen = global_topk(lambda j: params[j][1].detach().abs().float(), numels, k)
            else:
                chosen = split_global(random_global(sum(numels), k, seed), numels)
        out = {}
        for j, ((name, p), c) in enumerate(zip(params, chosen)):
            score = p.detach().reshape(-1)[c].abs().float() if method == "magnitude" else sq[j].reshape(-1)[c]
            out[name] = (c, s[j].reshape(-1)[c], score)
        return out


def _dropout_model(seed: int = 0) -> transformers.LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, attention_dropout=0.3)
    model = transformers.LlamaForCausalLM(cfg).train()  # dropout active: the two passes must draw alike
    model.requires_grad_(False)
    return model


@pytest.mark.parametrize("method", ["sensitivity", "random", "magnitude"])
@pytest.mark.parametrize("variant", ["tied", "untied", "bf16", "dropout", "exclude"])
def test_streamed_passes_equal_the_dense_reference_bitwise(method: str, variant: str) -> None:
    """Same indices, grad_mean and score as the dense two-accumulator algorithm, bit for bit, and the
    global RNG left where that algorithm leaves it."""
    exclude = ("*embed_tokens*",) if variant == "exclude" else ()
    for density in (1e-3, 0.3, 1.0) if variant == "tied" else (1e-3, 0.3):
        make = {"tied": lambda: tiny_model(), "untied": lambda: tiny_model(tie=False), "exclude": lambda: tiny_model(),
                "bf16": lambda: tiny_model().to(torch.bfloat16), "dropout": lambda: _dropout_model()}[variant]
        data = batches(n_batches=4, seq=16)
        torch.manual_seed(99)
        ref = _DenseReference.mask(make(), data, density, method, seed=3, exclude=exclude)
        ref_rng = torch.get_rng_state()
        torch.manual_seed(99)
        model = make()
        mask = compute_mask(model, iter(data), density=density, method=method, seed=3, exclude=exclude)
        assert torch.equal(torch.get_rng_state(), ref_rng)
        assert list(mask.tensors) == list(ref)
        for name, t in mask.tensors.items():
            idx, gbar, score = ref[name]
            assert torch.equal(t.indices, idx), (name, density)
            assert torch.equal(t.grad_mean, gbar), (name, density)
            assert torch.equal(t.score, score), (name, density)
        assert mask.meta.n_batches == 4
        assert all(not p.requires_grad and p.grad is None for p in model.parameters())


@pytest.mark.parametrize("variant", ["tied", "dropout", "untied-ties"])
def test_score_groups_give_the_same_mask_bitwise(variant: str) -> None:
    """Scoring the parameters group by group (one pass each, a smaller accumulator) changes nothing:
    same indices, grad_mean and score as one group and as the dense reference, ties at the cut included."""
    make = {"tied": lambda: tiny_model(), "dropout": lambda: _dropout_model(),
            "untied-ties": lambda: tiny_model(tie=False)}[variant]
    data = batches(n_batches=3, seq=16, high=VOCAB // 2 if variant == "untied-ties" else VOCAB)
    d = sum(p.numel() for p in make().parameters())
    densities = (0.5,) if variant == "untied-ties" else (1e-3, 0.05)  # 0.5: the cut falls in the zero tie
    for density in densities:
        torch.manual_seed(5)
        ref = _DenseReference.mask(make(), data, density)
        for groups in (2, 5, 1000):
            torch.manual_seed(5)
            mask = compute_mask(make(), data, density=density, score_groups=groups)
            assert mask.k == k_for_density(density, d)
            for name, t in mask.tensors.items():
                idx, gbar, score = ref[name]
                assert torch.equal(t.indices, idx) and torch.equal(t.grad_mean, gbar), (name, groups)
                assert torch.equal(t.score, score), (name, groups)


def test_split_groups_are_consecutive_balanced_and_nonempty() -> None:
    from meerkat_core.mask.compute import split_groups

    numels = [5, 100, 1, 1, 50, 50, 3, 90]
    for g in (1, 2, 3, 4, 8, 20):
        parts = split_groups(numels, g)
        assert [j for part in parts for j in part] == list(range(len(numels)))
        assert len(parts) == min(g, len(numels)) and all(parts)
    assert [sum(numels[j] for j in part) for part in split_groups(numels, 2)] == [157, 143]
    with pytest.raises(MeerkatInputError, match="score-groups"):
        compute_mask(tiny_model(), batches(), density=0.1, score_groups=0)


def test_gradients_are_consumed_one_parameter_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """No moment holds the gradients of the whole model: when a parameter's gradient is handed over, no
    other parameter has a .grad, and every pass leaves none behind."""
    from meerkat_core.mask import gradients

    model, data = tiny_model(), batches()
    params = list(model.parameters())
    seen: list[int] = []
    for cls in (gradients.SquaredSums, gradients.KeptSums):
        orig = cls.add

        def add(self, j, g, _orig=orig):
            seen.append(sum(p.grad is not None for p in params))
            return _orig(self, j, g)

        monkeypatch.setattr(cls, "add", add)
    labels: list[str] = []
    compute_mask(model, data, density=0.02, progress=lambda i, n, label: labels.append(label))
    assert seen and max(seen) == 0
    assert labels.count("calibration backprop") == 3 and labels.count("mean gradient on the kept weights") == 3


def test_second_pass_backprops_only_tensors_that_own_kept_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    from meerkat_core.mask import gradients

    model, data = tiny_model(), batches(n_batches=1)
    calls: list[list[int]] = []
    orig = gradients.backprop_batches

    def spy(model_, params, batches_, consumer, *, which=None, **kw):
        calls.append(list(range(len(params))) if which is None else list(which))
        return orig(model_, params, batches_, consumer, which=which, **kw)

    monkeypatch.setattr("meerkat_core.mask.compute.backprop_batches", spy)
    mask = compute_mask(model, data, density=1e-3)
    names = [n for n, _ in model.named_parameters()]
    assert len(calls) == 2 and calls[0] == list(range(len(names)))
    assert [names[j] for j in calls[1]] == [n for n, t in mask.tensors.items() if t.k]
    assert len(calls[1]) < len(names)  # at this density some tensors own nothing


def _brute(flat: torch.Tensor, k: int) -> np.ndarray:
    return np.sort(np.lexsort((np.arange(flat.numel()), -flat.double().numpy()))[: min(k, flat.numel())])


def test_topk_exact_with_ties_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(select_mod, "_SCAN_CHUNK", 7)
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (200,), generator=g).float()
    for k in (1, 5, 50, 120, 199, 200, 500):
        np.testing.assert_array_equal(topk_exact(scores, k).numpy(), _brute(scores, k))


@pytest.mark.parametrize("chunk", [3, 1 << 20])
def test_global_topk_over_tensors_exactly(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(select_mod, "_SCAN_CHUNK", chunk)
    g = torch.Generator().manual_seed(1)
    for high in (2, 3, 50):  # heavy ties .. few ties
        tensors = [torch.randint(0, high, (n,), generator=g).float() for n in (5, 40, 1, 33, 0, 17)]
        flat = torch.cat(tensors)
        numels = [t.numel() for t in tensors]
        for k in (1, 3, 20, 60, 95, 96, 200):
            parts = global_topk(lambda j: tensors[j], numels, k)
            offsets = np.cumsum([0] + numels[:-1])
            got = np.sort(np.concatenate([p.numpy() + o for p, o in zip(parts, offsets)]))
            np.testing.assert_array_equal(got, _brute(flat, k))
            for p in parts:
                assert p.dtype == torch.int64 and (p.numel() < 2 or bool((p[1:] > p[:-1]).all()))


def test_split_global() -> None:
    parts = split_global(torch.tensor([0, 4, 5, 9, 10]), [5, 0, 5, 1])
    assert [p.tolist() for p in parts] == [[0, 4], [], [0, 4], [0]]


def test_nan_scores_are_refused() -> None:
    from meerkat_core.errors import MeerkatError

    with pytest.raises(MeerkatError, match="NaN"):
        topk_exact(torch.tensor([1.0, float("nan"), 2.0]), 1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_selection_size_and_grad_mean() -> None:
    data = batches()
    cpu = compute_mask(tiny_model(), data, density=0.02)
    gpu = compute_mask(tiny_model().cuda(), data, density=0.02)
    assert gpu.k == cpu.k and list(gpu.tensors) == list(cpu.tensors)
    inter = sum(np.intersect1d(a.indices.numpy(), b.indices.numpy()).size
                for a, b in zip(cpu.tensors.values(), gpu.tensors.values()))
    assert inter >= 0.95 * cpu.k  # float summation order may differ at the cut, nowhere else
    for a, b in zip(cpu.tensors.values(), gpu.tensors.values()):
        assert b.indices.device.type == "cpu" and b.grad_mean.dtype == torch.float32
