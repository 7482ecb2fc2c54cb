"""Cell diagrams of a genotype with graphviz, as pt.darts draws them."""

from __future__ import annotations

import logging
import shutil

import graphviz

from darts_jax.genotypes import Genotype


def cell_graph(nodes, concat, caption: str | None = None) -> graphviz.Digraph:
    """A left-to-right DAG: inputs c_{k-2}, c_{k-1}, nodes 0..n-1, output c_{k}."""
    g = graphviz.Digraph(
        format="png",
        edge_attr={"fontsize": "20", "fontname": "times"},
        node_attr={
            "style": "filled",
            "shape": "rect",
            "align": "center",
            "fontsize": "20",
            "height": "0.5",
            "width": "0.5",
            "penwidth": "2",
            "fontname": "times",
        },
        engine="dot",
    )
    g.body.extend(["rankdir=LR"])
    names = ["c_{k-2}", "c_{k-1}"] + [str(i) for i in range(len(nodes))]
    g.node(names[0], fillcolor="darkseagreen2")
    g.node(names[1], fillcolor="darkseagreen2")
    for i in range(len(nodes)):
        g.node(str(i), fillcolor="lightblue")
    for i, edges in enumerate(nodes):
        for op, j in edges:
            g.edge(names[j], str(i), label=op, fillcolor="gray")
    g.node("c_{k}", fillcolor="palegoldenrod")
    for j in concat:
        g.edge(names[j], "c_{k}", fillcolor="gray")
    if caption:
        g.attr(label=caption, overlap="false", fontsize="20", fontname="times")
    return g


_warned = False


def plot_genotype(genotype: Genotype, path_prefix: str, caption: str = "") -> list[str]:
    """Writes ``<prefix>-normal`` and ``<prefix>-reduce`` (.png, or .gv without `dot`)."""
    global _warned
    written = []
    for kind in ("normal", "reduce"):
        g = cell_graph(
            getattr(genotype, kind),
            getattr(genotype, f"{kind}_concat"),
            f"{caption} {kind}".strip(),
        )
        path = f"{path_prefix}-{kind}"
        if shutil.which("dot"):
            written.append(g.render(path, cleanup=True))
        else:
            written.append(g.save(path + ".gv"))
            if not _warned:
                logging.getLogger(__name__).warning(
                    "graphviz 'dot' not found: wrote .gv sources instead of PNGs "
                    "(apt-get install graphviz)"
                )
                _warned = True
    return written
