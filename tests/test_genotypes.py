import os

import numpy as np
import pytest

from darts_jax import genotypes as G

SEED_CIFAR10 = (
    "Genotype(normal=[[('sep_conv_3x3', 0), ('dil_conv_5x5', 1)], [('skip_connect', 0), "
    "('dil_conv_3x3', 2)], [('sep_conv_3x3', 1), ('skip_connect', 0)], [('sep_conv_3x3', 1), "
    "('skip_connect', 0)]], normal_concat=range(2, 6), reduce=[[('max_pool_3x3', 0), "
    "('max_pool_3x3', 1)], [('max_pool_3x3', 0), ('skip_connect', 2)], [('skip_connect', 3), "
    "('max_pool_3x3', 0)], [('skip_connect', 2), ('max_pool_3x3', 0)]], reduce_concat=range(2, 6))"
)
SEED_MULTILINE = """Genotype(
normal=[[('sep_conv_3x3', 0), ('dil_conv_5x5', 1)], [('sep_conv_3x3', 2), ('sep_conv_3x3', 1)], [('dil_conv_5x5', 3), ('sep_conv_3x3', 1)], [('sep_conv_5x5', 4), ('dil_conv_5x5', 3)]],
normal_concat=range(2, 6),
reduce=[[('dil_conv_3x3', 0), ('sep_conv_3x3', 1)], [('avg_pool_3x3', 0), ('skip_connect', 2)], [('dil_conv_5x5', 3), ('avg_pool_3x3', 0)], [('dil_conv_3x3', 1), ('max_pool_3x3', 0)]],
reduce_concat=range(2, 6)
)"""
OFFICIAL_V2 = (
    "DARTS_V2 = Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
    "('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), "
    "('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), "
    "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
    "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])"
)


def test_seed_genotypes_round_trip_byte_for_byte():
    for g in (G.CIFAR10, G.MNIST, G.FASHIONMNIST):
        text = G.to_str(g)
        assert G.to_str(G.from_str(text)) == text
    assert G.to_str(G.from_str(SEED_CIFAR10)) == SEED_CIFAR10


def test_multiline_seed_text_parses_to_the_one_line_form():
    g = G.from_str(SEED_MULTILINE)
    assert g == G.MNIST
    one_line = SEED_MULTILINE.replace("(\n", "(").replace(",\n", ", ").replace("\n)", ")")
    assert G.to_str(g) == one_line


def test_official_flat_form_round_trips_and_matches_nested():
    g = G.from_str(OFFICIAL_V2)
    assert g == G.DARTS_V2
    assert G.to_str(g, flat=True) == OFFICIAL_V2.split(" = ", 1)[1]
    assert G.from_str(G.to_str(g)) == g
    assert g.normal[3] == [("skip_connect", 0), ("dil_conv_3x3", 2)]
    assert g.normal_concat == range(2, 6)


def test_pt_darts_str_of_namedtuple_is_our_text():
    assert str(G.CIFAR10) == G.to_str(G.CIFAR10)


@pytest.mark.parametrize(
    "text, fragment",
    [
        (SEED_CIFAR10.replace("sep_conv_3x3", "conv_7x7", 1), "unknown op 'conv_7x7'"),
        (
            SEED_CIFAR10.replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', 5)"),
            "valid inputs are 0..2",
        ),
        (
            SEED_CIFAR10.replace("reduce_concat=range(2, 6)", "reduce_concat=range(2, 9)"),
            "reduce_concat",
        ),
        (
            SEED_CIFAR10.replace("[('skip_connect', 2), ('max_pool_3x3', 0)]]", "]").replace(
                "[('skip_connect', 3), ('max_pool_3x3', 0)], ]", "]"
            ),
            "nodes",
        ),
        (
            "Genotype(normal=[('sep_conv_3x3', 0)], normal_concat=[2], reduce=[('sep_conv_3x3', 0)], reduce_concat=[2])",
            "two edges per node",
        ),
        ("__import__('os').system('touch /tmp/darts_jax_pwned')", "Genotype"),
        (
            "Genotype(normal=__import__('os').listdir('.'), normal_concat=range(2, 6), reduce=[], reduce_concat=range(2, 6))",
            "non-empty list",
        ),
        ("Genotype(**{'normal': 1})", "field"),
        (
            "Genotype(normal=[[('sep_conv_3x3', 0)]], normal_concat=range(2, 3), reduce=[[(open('x'), 0)]], reduce_concat=range(2, 3))",
            "string literal",
        ),
        ("lambda: 0", "Genotype"),
        ("[" * 5000 + "]" * 5000, "Genotype"),
        ("x" * 30000, "characters"),
        ("", "parseable"),
        ("Genotype(normal=[[('sep_conv_3x3', 0)]], normal_concat=range(2, 3))", "missing"),
        (
            "Genotype(normal=[[('sep_conv_3x3', 0.5)]], normal_concat=range(2, 3), reduce=[[('sep_conv_3x3', 0)]], reduce_concat=range(2, 3))",
            "integer literal",
        ),
    ],
)
def test_bad_and_hostile_texts_raise_value_error_and_execute_nothing(text, fragment):
    with pytest.raises(ValueError, match="invalid genotype") as info:
        G.from_str(text)
    assert fragment in str(info.value)
    assert not os.path.exists("/tmp/darts_jax_pwned")


def test_named_genotypes():
    assert G.NAMED["DARTS"] is G.DARTS_V2
    assert G.DARTS_V1.reduce[3] == [("skip_connect", 2), ("avg_pool_3x3", 0)]


def test_derive_picks_the_strongest_edges_by_softmax_excluding_none():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1e-3, (14, 8))
    a[:, G.PRIMITIVES.index("none")] = 5.0  # `none` never wins
    # node 3 (rows 9..13): edge 2 strongest via sep_conv_5x5, edge 4 via skip_connect
    a[11, G.PRIMITIVES.index("sep_conv_5x5")] = 3.0
    a[13, G.PRIMITIVES.index("skip_connect")] = 2.0
    # node 0: edge 1 via dil_conv_3x3 stronger than edge 0 via max_pool
    a[1, G.PRIMITIVES.index("dil_conv_3x3")] = 2.0
    a[0, G.PRIMITIVES.index("max_pool_3x3")] = 1.0
    g = G.derive({"normal": a, "reduce": a})
    assert g.normal[3] == [("sep_conv_5x5", 2), ("skip_connect", 4)]
    assert g.normal[0] == [("dil_conv_3x3", 1), ("max_pool_3x3", 0)]
    assert g.normal_concat == range(2, 6)
    assert G.from_str(G.to_str(g)) == g


def test_derive_ranks_by_softmax_not_raw_alpha():
    # Raw alphas would prefer edge 0 (max raw 2.0), softmax prefers edge 1:
    # edge 1's other ops are much smaller, so its best op holds more mass.
    a = np.zeros((5, 8))
    a[0] = [2.0, 1.9, 1.9, 1.9, 1.9, 1.9, 1.9, 1.9]
    a[1] = [1.5, -5, -5, -5, -5, -5, -5, -5]
    a[2:] = 0
    nodes = G.derive_cell(a, k=1)
    assert nodes[0] == [("max_pool_3x3", 1)]


def test_derive_rejects_bad_shapes():
    with pytest.raises(ValueError, match="op columns"):
        G.derive_cell(np.zeros((14, 7)))
    with pytest.raises(ValueError, match="node count"):
        G.derive_cell(np.zeros((13, 8)))


def test_resolve_accepts_text_file_and_names(tmp_path):
    assert G.resolve(SEED_CIFAR10) == G.CIFAR10
    assert G.resolve("darts_v2") is G.DARTS_V2 and G.resolve("FashionMNIST") is G.FASHIONMNIST
    path = tmp_path / "genotype.txt"
    path.write_text(G.to_str(G.MNIST) + "\n")
    assert G.resolve(str(path)) == G.MNIST
    bad = tmp_path / "bad.txt"
    bad.write_text("Genotype(normal=1)")
    with pytest.raises(ValueError, match="bad.txt"):
        G.resolve(str(bad))
    with pytest.raises(ValueError, match="neither genotype text, an existing file, nor a name"):
        G.resolve("DARTS_V3")
