"""Core partitioning: property tests (disjoint, exact cover, seeded, min-size, mixed) and the manifest."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from flwr_datasets.partitioner import Partitioner

from meerkat_core.errors import MeerkatInputError
from meerkat_core.partition import (
    MixedPartitioner,
    SchemeConfig,
    build_manifest,
    dataset_fingerprint,
    encode_labels,
    load_partition,
    partition_dataset,
    verify_partition,
    write_partition,
)

PROPS = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def make_ds(labels, text_prefix: str = "t") -> datasets.Dataset:
    labels = [int(x) if not isinstance(x, str) else x for x in labels]
    return datasets.Dataset.from_dict({"text": [f"{text_prefix}{i}" for i in range(len(labels))], "label": labels})


@st.composite
def labelled(draw, min_n: int = 20, max_n: int = 300, max_classes: int = 5):
    """A dataset whose labels are drawn with a random (possibly skewed) class mix, every class present."""
    num_classes = draw(st.integers(2, max_classes))
    n = draw(st.integers(max(min_n, num_classes), max_n))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.ones(num_classes) * 2.0)
    labels = rng.choice(num_classes, size=n, p=weights)
    labels[:num_classes] = np.arange(num_classes)  # every class present
    rng.shuffle(labels)
    return make_ds(labels.tolist())


def config_for(scheme: str, num_clients: int, **kw) -> SchemeConfig:
    return SchemeConfig(scheme=scheme, num_clients=num_clients, **kw)


def check_exact_cover(result, n: int) -> None:
    allidx = np.concatenate([np.asarray(c.indices, dtype=np.int64) for c in result.clients])
    assert allidx.size == n, "clients must cover every sample"
    assert np.unique(allidx).size == n, "clients must be disjoint"
    assert allidx.min() >= 0 and allidx.max() == n - 1
    for c in result.clients:
        assert c.indices == sorted(c.indices)
    assert sum(c.size for c in result.clients) == n == result.num_samples


def check_stats(result, ds: datasets.Dataset) -> None:
    labels = np.asarray(ds["label"][:])
    for c in result.clients:
        expect = np.bincount(labels[c.indices], minlength=result.num_classes)
        assert c.label_counts == expect.tolist()
        assert 0.0 <= c.tv_distance <= 1.0
        assert c.is_extreme == (int((expect > 0).sum()) == 1)


# --------------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "pathological", "mixed"])
@PROPS
@given(
    data=st.data(),
    ds=labelled(),
    alpha=st.sampled_from([0.1, 0.5, 1.0, 10.0]),
    seed=st.integers(0, 10_000),
)
def test_partitions_are_disjoint_and_cover_exactly(scheme, data, ds, alpha, seed):
    n = ds.num_rows
    num_classes = len(set(ds["label"][:]))
    low = num_classes if scheme == "pathological" else 1  # >= C clients: every label gets used
    clients = data.draw(st.integers(low, 12), label="clients")
    k = data.draw(st.integers(1, num_classes), label="labels_per_client")
    extreme = data.draw(st.integers(0, clients - 1), label="extreme") if scheme == "mixed" else 0
    cfg = config_for(scheme, clients, alpha=alpha, labels_per_client=k, extreme_clients=extreme)
    try:
        result = partition_dataset(ds, "label", cfg, seed)
    except MeerkatInputError as exc:
        event(f"{scheme}: refused")
        # Only the data-dependent impossibilities may refuse; IID never does when N <= n.
        assert scheme in ("dirichlet", "pathological", "mixed"), str(exc)
        assert "--min-size" in str(exc) or "impossible" in str(exc), str(exc)
        return
    event(f"{scheme}: partitioned")
    assert len(result.clients) == clients
    check_exact_cover(result, n)
    check_stats(result, ds)
    if scheme == "pathological":
        assert all(c.num_labels == k for c in result.clients)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "pathological", "mixed"])
@PROPS
@given(
    ds=labelled(min_n=30),
    clients=st.integers(2, 8),
    seed=st.integers(0, 10_000),
)
def test_same_seed_same_indices_other_seed_other_indices(ds, scheme, clients, seed):
    # Configurations chosen to be satisfiable and to have randomness to show.
    num_classes = len(set(ds["label"][:]))
    if scheme == "mixed":
        # >= 2 IID clients, so the IID rest is always split at random (with a single IID client
        # the extreme one may take its whole label and leave nothing to vary but its id).
        clients = max(clients, 3)
    cfg = config_for(
        scheme, clients, alpha=1.0, labels_per_client=num_classes, extreme_clients=1 if scheme == "mixed" else 0
    )
    try:
        a = partition_dataset(ds, "label", cfg, seed)
    except MeerkatInputError:
        event(f"{scheme}: refused")
        assume(False)
    b = partition_dataset(ds, "label", cfg, seed)
    assert [c.indices for c in a.clients] == [c.indices for c in b.clients]
    others = []
    for other_seed in (seed + 1, seed + 2, seed + 3):
        try:
            others.append(partition_dataset(ds, "label", cfg, other_seed))
        except MeerkatInputError:
            continue
    assume(others)
    # With >= 30 samples over >= 2 clients, three other seeds all giving the very same split
    # has negligible probability.
    assert any([c.indices for c in o.clients] != [c.indices for c in a.clients] for o in others)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "pathological", "mixed"])
@PROPS
@given(
    ds=labelled(min_n=40),
    clients=st.integers(1, 8),
    min_size=st.integers(1, 15),
    seed=st.integers(0, 10_000),
)
def test_min_size_is_respected_or_refused(ds, scheme, clients, min_size, seed):
    n = ds.num_rows
    cfg = config_for(scheme, clients, alpha=1.0, labels_per_client=2, extreme_clients=1 if scheme == "mixed" else 0,
                     min_size=min_size)
    try:
        result = partition_dataset(ds, "label", cfg, seed)
    except MeerkatInputError as exc:
        event(f"{scheme}: refused")
        # IID is refused exactly when n // N < M.
        if scheme == "iid":
            assert n // clients < min_size, str(exc)
        return
    event(f"{scheme}: partitioned")
    assert min(c.size for c in result.clients) >= min_size
    if scheme == "iid":
        assert n // clients >= min_size
        sizes = [c.size for c in result.clients]
        assert max(sizes) - min(sizes) <= 1


@PROPS
@given(
    num_classes=st.integers(2, 5),
    per_class=st.integers(20, 80),
    clients=st.integers(2, 10),
    e_frac=st.floats(0, 1),
    seed=st.integers(0, 10_000),
)
def test_mixed_has_exactly_e_single_label_clients(num_classes, per_class, clients, e_frac, seed):
    extreme = min(clients - 1, int(round(e_frac * clients)))
    labels = np.repeat(np.arange(num_classes), per_class)
    np.random.default_rng(seed).shuffle(labels)
    ds = make_ds(labels.tolist())
    result = partition_dataset(ds, "label", config_for("mixed", clients, extreme_clients=extreme), seed)
    check_exact_cover(result, ds.num_rows)
    check_stats(result, ds)
    designed = [c for c in result.clients if c.assigned_label is not None]
    assert len(designed) == extreme
    share = ds.num_rows // clients
    for j, c in enumerate(sorted(designed, key=lambda c: c.id)):
        assert c.num_labels == 1 and c.is_extreme
        assert c.assigned_label == j % num_classes  # round-robin over the sorted labels
        assert c.label_counts[c.assigned_label] == c.size <= share
    # The IID rest holds several labels whenever at least two labels remain in quantity.
    remaining = np.asarray(result.global_label_counts) - np.sum(
        [c.label_counts for c in designed] or [np.zeros(num_classes, dtype=int)], axis=0
    )
    iid = [c for c in result.clients if c.assigned_label is None]
    if int((remaining >= 25 * len(iid)).sum()) >= 2:
        assert all(c.num_labels >= 2 for c in iid)
        assert sum(c.is_extreme for c in result.clients) == extreme


def test_mixed_all_extreme_covers_every_label():
    labels = np.repeat(np.arange(3), 10)
    result = partition_dataset(make_ds(labels.tolist()), "label", config_for("mixed", 4, extreme_clients=4), 0)
    check_exact_cover(result, 30)
    assert all(c.is_extreme for c in result.clients)
    with pytest.raises(MeerkatInputError):
        partition_dataset(make_ds(labels.tolist()), "label", config_for("mixed", 2, extreme_clients=2), 0)


def test_mixed_partitioner_is_a_flwr_partitioner():
    ds = make_ds([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2] * 5)
    part = MixedPartitioner(num_partitions=4, partition_by="label", num_extreme=2, seed=3)
    assert isinstance(part, Partitioner)
    part.dataset = ds
    pieces = [part.load_partition(i) for i in range(4)]
    assert sum(p.num_rows for p in pieces) == ds.num_rows
    for pid in part.extreme_partition_ids:
        assert set(pieces[pid]["label"][:]) == {part.extreme_labels[pid]}
    assert len(part.extreme_partition_ids) == 2


def test_dirichlet_skew_falls_as_alpha_grows():
    labels = np.repeat(np.arange(4), 1000)
    np.random.default_rng(0).shuffle(labels)
    ds = make_ds(labels.tolist())
    mean_tv = {}
    for alpha in (0.1, 1.0, 100.0):
        tvs = [
            partition_dataset(ds, "label", config_for("dirichlet", 10, alpha=alpha), seed).mean_tv_distance
            for seed in range(3)
        ]
        mean_tv[alpha] = float(np.mean(tvs))
    assert mean_tv[0.1] > mean_tv[1.0] > mean_tv[100.0], mean_tv
    assert mean_tv[0.1] > 0.4, mean_tv  # visibly skewed
    assert mean_tv[100.0] < 0.08, mean_tv  # close to IID


def test_iid_is_close_to_global_mix():
    labels = np.repeat(np.arange(3), 500)
    result = partition_dataset(make_ds(labels.tolist()), "label", config_for("iid", 5), 7)
    assert result.mean_tv_distance < 0.08
    assert all(c.num_labels == 3 for c in result.clients)


def test_pathological_gives_k_labels_per_client():
    labels = np.repeat(np.arange(4), 50)
    result = partition_dataset(make_ds(labels.tolist()), "label", config_for("pathological", 8, labels_per_client=2), 1)
    check_exact_cover(result, 200)
    assert all(c.num_labels == 2 for c in result.clients)


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cfg, match",
    [
        (config_for("iid", 11), "exceeds the 10 samples"),
        (config_for("dirichlet", 2, alpha=0.0), "--alpha"),
        (config_for("dirichlet", 2, alpha=-1.0), "--alpha"),
        (config_for("dirichlet", 2, alpha=float("nan")), "--alpha"),
        (config_for("mixed", 2, extreme_clients=3), "--extreme-clients 3 exceeds --clients 2"),
        (config_for("iid", 2, extreme_clients=1), "only to --scheme mixed"),
        (config_for("pathological", 2, labels_per_client=3), "--labels-per-client 3 exceeds"),
        (config_for("iid", 3, min_size=4), "--min-size 4"),
        (config_for("iid", 0), "--clients"),
        (config_for("nope", 2), "unknown --scheme"),
    ],
)
def test_bad_config_is_an_input_error(cfg, match):
    ds = make_ds([0, 1] * 5)
    with pytest.raises(MeerkatInputError, match=match):
        partition_dataset(ds, "label", cfg, 0)


def test_unknown_label_column_and_bad_seed():
    ds = make_ds([0, 1] * 5)
    with pytest.raises(MeerkatInputError, match="unknown label column"):
        partition_dataset(ds, "y", config_for("iid", 2), 0)
    with pytest.raises(MeerkatInputError, match="--seed"):
        partition_dataset(ds, "label", config_for("iid", 2), -1)


def test_unsatisfiable_dirichlet_min_size_is_an_input_error():
    labels = np.repeat(np.arange(2), 100)
    with pytest.raises(MeerkatInputError, match="--min-size 19"):
        partition_dataset(make_ds(labels.tolist()), "label", config_for("dirichlet", 10, alpha=0.05, min_size=19), 0)


# --------------------------------------------------------------------------------------------------
# Labels and fingerprints
# --------------------------------------------------------------------------------------------------
def test_string_labels_map_to_sorted_ids():
    ds = make_ds(["pos", "neg", "neutral", "pos", "neg", "pos"])
    enc = encode_labels(ds, "label")
    assert enc.label_names == ["neg", "neutral", "pos"]
    assert enc.codes.tolist() == [2, 0, 1, 2, 0, 2]
    assert enc.mapping == "sorted_unique"
    result = partition_dataset(ds, "label", config_for("iid", 2), 0)
    assert result.label_names == ["neg", "neutral", "pos"]
    assert result.global_label_counts == [2, 1, 3]


def test_int_labels_keep_ids_and_task_names():
    ds = make_ds([0, 1, 1, 0])
    enc = encode_labels(ds, "label", label_names=["negative", "positive"], num_classes=2)
    assert enc.mapping == "identity" and enc.codes.tolist() == [0, 1, 1, 0]
    assert enc.label_names == ["negative", "positive"]
    gap = encode_labels(make_ds([3, 7, 3]), "label")
    assert gap.mapping == "sorted_unique" and gap.codes.tolist() == [0, 1, 0] and gap.label_names == ["3", "7"]
    with pytest.raises(MeerkatInputError):
        encode_labels(ds, "label", num_classes=1)


def test_fingerprint_is_content_and_order_sensitive():
    a = make_ds([0, 1, 0, 1])
    assert dataset_fingerprint(a, "text", "label") == dataset_fingerprint(make_ds([0, 1, 0, 1]), "text", "label")
    assert dataset_fingerprint(a, "text", "label") != dataset_fingerprint(make_ds([0, 1, 1, 1]), "text", "label")
    assert dataset_fingerprint(a, "text", "label") != dataset_fingerprint(make_ds([0, 1, 0, 1], "u"), "text", "label")
    assert dataset_fingerprint(a, "text", "label") != dataset_fingerprint(a.select([1, 0, 2, 3]), "text", "label")
    # Extra columns do not count; float labels that are integral hash like ints.
    extra = a.add_column("other", ["x"] * 4)
    assert dataset_fingerprint(extra, "text", "label") == dataset_fingerprint(a, "text", "label")
    floats = datasets.Dataset.from_dict({"text": a["text"][:], "label": [0.0, 1.0, 0.0, 1.0]})
    assert dataset_fingerprint(floats, "text", "label") == dataset_fingerprint(a, "text", "label")
    with pytest.raises(MeerkatInputError):
        dataset_fingerprint(a, "text", "nope")


def test_fingerprint_matches_the_task_loader_fingerprint():
    sources = pytest.importorskip("meerkat_core.tasks.sources")
    ds = make_ds([0, 1, 2, 1, 0])
    assert dataset_fingerprint(ds, "text", "label") == sources.dataset_fingerprint(ds)


# --------------------------------------------------------------------------------------------------
# Manifest: write, load, verify
# --------------------------------------------------------------------------------------------------
def _write(tmp_path, ds, cfg, seed=0, name="part"):
    result = partition_dataset(ds, "label", cfg, seed)
    fp = dataset_fingerprint(ds, "text", "label")
    doc = build_manifest(
        result, dataset_fp=fp, source={"kind": "test"}, text_column="text", label_column="label"
    )
    out = tmp_path / name
    write_partition(out, doc)
    return result, fp, out


def test_manifest_roundtrip_and_verify(tmp_path):
    labels = np.repeat(np.arange(3), 40)
    ds = make_ds(labels.tolist())
    result, fp, out = _write(tmp_path, ds, config_for("mixed", 6, extreme_clients=2), seed=5)
    m = load_partition(out)
    assert m.num_samples == 120 and m.num_clients == 6 and m.scheme == "mixed" and m.seed == 5
    assert m.params["extreme_clients"] == 2
    for c in range(6):
        assert m.client_indices(c) == result.clients[c].indices
    assert m.client_dataset(ds, 1)["text"][:] == [f"t{i}" for i in result.clients[1].indices]
    with pytest.raises(MeerkatInputError):
        m.client_dataset(ds.select(range(10)), 0)
    assert m.extreme_clients() == [c.id for c in result.clients if c.is_extreme]
    assert m.raw["format"] == "meerkat.partition" and m.raw["format_version"] == 1
    assert m.raw["test_split"]["partitioned"] is False
    assert set(m.raw["versions"]) >= {"flwr-datasets", "datasets", "meerkat_core"}
    verify_partition(m, fp)
    verify_partition(load_partition(out / "manifest.json"), dataset_fingerprint(ds, "text", "label"))
    other = make_ds(labels.tolist(), "other")
    with pytest.raises(MeerkatInputError, match="another dataset"):
        verify_partition(m, dataset_fingerprint(other, "text", "label"))
    with pytest.raises(MeerkatInputError):
        m.client_indices(6)
    # no temporary directories are left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part"]


def test_rewrite_replaces_partition_but_never_clobbers_other_dirs(tmp_path):
    ds = make_ds([0, 1] * 20)
    _write(tmp_path, ds, config_for("iid", 2), seed=0)
    _, _, out = _write(tmp_path, ds, config_for("iid", 4), seed=1)
    assert load_partition(out).num_clients == 4
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(MeerkatInputError, match="not a meerkat partition"):
        _write(tmp_path, ds, config_for("iid", 2), name="precious")
    assert (precious / "notes.txt").read_text() == "keep me"


def test_load_partition_rejects_damaged_manifests(tmp_path):
    ds = make_ds([0, 1] * 20)
    _, _, out = _write(tmp_path, ds, config_for("iid", 2))
    path = out / "manifest.json"
    doc = json.loads(path.read_text())

    def damaged(mutate):
        bad = json.loads(json.dumps(doc))
        mutate(bad)
        path.write_text(json.dumps(bad))
        with pytest.raises(MeerkatInputError):
            load_partition(out)

    damaged(lambda d: d.update(format="other"))
    damaged(lambda d: d.update(format_version=2))
    damaged(lambda d: d["clients"][1]["indices"].append(d["clients"][0]["indices"][0]))  # overlap
    damaged(lambda d: d["clients"][0]["indices"].pop())  # no longer covers
    damaged(lambda d: d.pop("num_samples"))
    with pytest.raises(MeerkatInputError, match="no such directory"):
        load_partition(tmp_path / "missing")
