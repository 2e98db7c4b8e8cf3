"""The pictures (Fig. 4 style arch.svg, supernet.svg with p_ij and the Viterbi path) are valid SVG
holding every layer, block and connection."""
import xml.etree.ElementTree as ET

import torch

from machinery.draw import arch_svg, draw_run, save_arch_params, supernet_svg
from supernet import arch_ops, get_space
from viterbi import derive, random_arch_params


def ids(svg_text):
    root = ET.fromstring(svg_text)
    assert root.tag.endswith("svg")
    return {el.get("id") for el in root.iter() if el.get("id")}


def test_both_pictures_hold_every_block_layer_and_edge(tmp_path):
    """Every routing block and connection of the super network, every layer and block of the arch."""
    for name, size in (("toy", 32), ("mbv2", 224), ("resnet", 224)):
        space = get_space(name, size)
        alphas, p = random_arch_params(space, torch.Generator().manual_seed(0))
        arch = derive(space, alphas, p)
        found = ids(supernet_svg(space, p, arch["path"]))
        assert {f"block-{b.index}" for b in space.blocks} <= found
        assert {f"edge-{i}-{j}" for i, j in space.edges} <= found
        found = ids(arch_svg(arch))
        assert {f"layer-{k}" for k in range(len(arch_ops(arch)))} <= found
        assert {f"block-{k}" for k in range(len(arch["blocks"]))} <= found


def test_a_search_folder_is_drawn_from_its_arch_params(tmp_path):
    """machinery.draw.draw_run re-derives the arch from arch_params.json and writes both pictures."""
    space = get_space("toy", 32)
    alphas, p = random_arch_params(space, torch.Generator().manual_seed(1))
    save_arch_params(space, alphas, p, str(tmp_path / "arch_params.json"))
    arch = draw_run(str(tmp_path))
    assert arch["path"] == derive(space, alphas, p)["path"]
    for f in ("arch.svg", "supernet.svg"):
        ET.parse(tmp_path / f)
