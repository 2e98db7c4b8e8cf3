"""Pictures of a search, as plain SVG text (no plotting package), and the file they are drawn from.

- arch_svg: the derived network drawn like the paper's Fig. 4: one rectangle per layer, its
  height growing with the channel count, coloured by operation, a dashed box per block,
  stage (resolution) boundaries marked, widths labelled.
- supernet_svg: the routing blocks of the super network by stage and resolution, every
  connection drawn with a stroke proportional to its path probability p_ij (Eq. 3), and the
  Viterbi path (Algorithm 1) highlighted.
- scatter_svg: points of several named series against two axes (studies/table1.py: test accuracy
  against FLOPs of searched and random networks), with a legend.
Every block, layer and edge element carries an id (block-J, layer-K, edge-I-J) so tests can find it.
- arch_params.json: alpha and p of a search, written after every epoch; what --run draws from.

    python -m machinery.draw --run SEARCH_FOLDER         draw OUT/arch.svg and OUT/supernet.svg of a search
    python -m machinery.draw --arch FILE [--svg OUT.svg]  summarise (and draw) an arch file
"""
import math
import os
from html import escape

from cost import op_flops
from machinery.cli import (ArgumentParser, UsageError, load_arch, output_file, read_json, run_cli, save_json_atomic,
                           save_text_atomic)
from supernet import arch_ops, arch_signatures, arch_text, get_space
from viterbi import derive

COLOURS = {  # kernel size picks the hue, expansion the shade
    "mbconv_k3_e3": "#9ecae1", "mbconv_k3_e6": "#3182bd", "mbconv_k5_e3": "#a1d99b", "mbconv_k5_e6": "#31a354",
    "mbconv_k7_e3": "#fdae6b", "mbconv_k7_e6": "#e6550d", "mbconv_k3_e1": "#bdbdbd", "basic_block": "#fd8d3c",
    "bottleneck": "#9e9ac8", "skip": "#ffffff", "conv3x3": "#636363", "conv1x1": "#636363", "linear": "#252525",
}


def _svg(width, height, body):
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
            f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="sans-serif" font-size="11">\n'
            f'<rect width="100%" height="100%" fill="white"/>\n' + "\n".join(body) + "\n</svg>\n")


def arch_svg(arch, title=None):
    """Fig. 4 style drawing of an arch file."""
    ops = arch_ops(arch)
    cmax = max(co for _, _, co, _, _ in ops)
    step, w, top, mid = 26, 18, 60, 170
    body, x = [], 30.0
    # which op belongs to which block: stem, then each block's head and layers, then last, linear
    owner = ["stem"]
    for k, b in enumerate(arch["blocks"]):
        owner += [k] * (1 + len(b["layers"]))
    owner += ["last"] * (arch["last"] is not None) + ["head"]
    spans, res_marks = {}, []
    for k, ((op, ci, co, s, r), who) in enumerate(zip(ops, owner)):
        h = 14 + 200 * math.sqrt(co / cmax)
        if s == 2:
            res_marks.append((x - step / 2 + w / 2, math.ceil(r / 2)))
        body.append(f'<rect id="layer-{k}" x="{x:.1f}" y="{mid - h / 2:.1f}" width="{w}" height="{h:.1f}" '
                    f'fill="{COLOURS.get(op, "#cccccc")}" stroke="#333" stroke-width="0.6">'
                    f'<title>{escape(op)} {ci}->{co} stride {s} @ {r}px</title></rect>')
        if isinstance(who, int):
            spans.setdefault(who, [x, x])[1] = x
        x += step
    for k, (x0, x1) in spans.items():
        b = arch["blocks"][k]
        body.append(f'<rect id="block-{k}" x="{x0 - 4:.1f}" y="{mid - 118:.1f}" width="{x1 - x0 + w + 8:.1f}" '
                    f'height="236" fill="none" stroke="#555" stroke-dasharray="4 3"/>')
        body.append(f'<text x="{(x0 + x1 + w) / 2:.1f}" y="{mid + 134:.1f}" text-anchor="middle">{b["out"]}</text>')
    for xm, r in res_marks:
        body.append(f'<line x1="{xm:.1f}" y1="{top - 12}" x2="{xm:.1f}" y2="{mid + 140}" stroke="#c00" '
                    f'stroke-width="1" stroke-dasharray="2 2"/><text x="{xm + 3:.1f}" y="{top - 2}" fill="#c00">'
                    f'{r}px</text>')
    body.append(f'<text x="30" y="20" font-size="13">{escape(title or "derived architecture")} '
                f'({arch["space"]}, {arch["input_size"]}px input)</text><text x="30" y="36" fill="#555">one '
                f'rectangle per layer, height ~ its width; a dashed box per block (width below); red: stride 2</text>')
    legend_ops = sorted({op for op, *_ in ops}, key=list(COLOURS).index)
    for k, op in enumerate(legend_ops):
        lx = 30 + 150 * (k % 5)
        ly = mid + 158 + 16 * (k // 5)
        body.append(f'<rect x="{lx}" y="{ly - 9}" width="10" height="10" fill="{COLOURS.get(op, "#ccc")}" '
                    f'stroke="#333" stroke-width="0.5"/><text x="{lx + 14}" y="{ly}">{op}</text>')
    height = mid + 170 + 16 * ((len(legend_ops) + 4) // 5)
    return _svg(max(x + 30, 800), height, body)


def supernet_svg(space, p, path, title=None):
    """The super network: blocks by stage (columns of bands) and resolution (rows), edges ~ p_ij."""
    dx, dy, left, top = 70, 90, 50, 84
    levels = sorted({b.level for b in space.blocks})
    pos = {b.index: (left + dx * b.index, top + dy * levels.index(b.level)) for b in space.blocks}
    on_path = set(zip(path, path[1:]))
    body = []
    stages = sorted({b.stage for b in space.blocks})
    for s in stages:  # a band per stage
        xs = [pos[b.index][0] for b in space.blocks if b.stage == s]
        body.append(f'<rect x="{min(xs) - 30}" y="{top - 40}" width="{max(xs) - min(xs) + 60}" '
                    f'height="{dy * len(levels) + 20}" fill="{"#f4f4f4" if s % 2 else "#e8eef7"}"/>'
                    f'<text x="{(min(xs) + max(xs)) / 2}" y="{top - 26}" text-anchor="middle">stage {s}</text>')
    for lv in levels:
        r = next(b.resolution for b in space.blocks if b.level == lv)
        body.append(f'<text x="8" y="{top + dy * levels.index(lv) + 4}">{r}px</text>')
    for (i, j), pij in sorted(zip(space.edges, p), key=lambda e: e[0] in on_path):
        (x0, y0), (x1, y1) = pos[i], pos[j]
        lift = 12 + 9 * (j - i)
        hot = (i, j) in on_path
        colour = "#d62728" if hot else "#1f4e99"
        body.append(f'<path id="edge-{i}-{j}" d="M{x0},{y0} Q{(x0 + x1) / 2},{min(y0, y1) - lift} {x1},{y1}" '
                    f'fill="none" stroke="{colour}" stroke-opacity="{0.9 if hot else 0.25 + 0.6 * float(pij):.2f}" '
                    f'stroke-width="{0.4 + 7 * float(pij):.2f}"><title>p({i},{j}) = {float(pij):.3f}</title></path>')
    for b in space.blocks:
        x, y = pos[b.index]
        hot = b.index in path
        body.append(f'<g id="block-{b.index}"><circle cx="{x}" cy="{y}" r="15" fill="{"#fde0dd" if hot else "white"}" '
                    f'stroke="{"#d62728" if hot else "#333"}" stroke-width="{2 if hot else 1}"/>'
                    f'<text x="{x}" y="{y + 4}" text-anchor="middle">{b.channels}</text>'
                    f'<text x="{x}" y="{y + 30}" text-anchor="middle" fill="#555">B{b.index}</text></g>')
    body.append(f'<text x="{left}" y="16" font-size="13">{escape(title or "super network")} ({space.name}, '
                f'M={space.connect}): circles are routing blocks (width inside), stroke ~ p_ij</text>'
                f'<text x="{left}" y="32" font-size="12" fill="#c00">red: the Viterbi path '
                f'{" - ".join(map(str, path))}</text>')
    return _svg(left + dx * space.n + 60, top + dy * len(levels) + 10, body)


def scatter_svg(series, xlabel, ylabel, title, lines=None):
    """series: {name: (colour, [(x, y), ...])}; every point is a circle with id point-NAME-K. lines: {name: (colour,
    [(x, y), ...])} drawn as a step line (a Pareto front) with id line-NAME."""
    lines = lines or {}
    pts = [pt for _, ps in list(series.values()) + list(lines.values()) for pt in ps]
    (x0, x1), (y0, y1) = ((min(v), max(v)) for v in zip(*pts))
    pad_x, pad_y = 0.08 * (x1 - x0 or abs(x0) or 1), 0.08 * (y1 - y0 or abs(y0) or 1)
    x0, x1, y0, y1 = x0 - pad_x, x1 + pad_x, y0 - pad_y, y1 + pad_y
    left, top, w, h = 70, 40, 480, 300

    def px(x, y):
        return left + w * (x - x0) / (x1 - x0), top + h * (1 - (y - y0) / (y1 - y0))

    body = [f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#333"/>',
            f'<text x="{left + w / 2}" y="{top + h + 36}" text-anchor="middle">{escape(xlabel)}</text>',
            f'<text x="18" y="{top + h / 2}" text-anchor="middle" transform="rotate(-90 18 {top + h / 2})">'
            f'{escape(ylabel)}</text>', f'<text x="{left}" y="22" font-size="13">{escape(title)}</text>']
    for t in range(5):  # tick labels at five even steps of each axis
        xv, yv = x0 + (x1 - x0) * t / 4, y0 + (y1 - y0) * t / 4
        (tx, _), (_, ty) = px(xv, y0), px(x0, yv)
        body.append(f'<text x="{tx:.1f}" y="{top + h + 16}" text-anchor="middle">{xv:.3g}</text>'
                    f'<text x="{left - 6}" y="{ty + 4:.1f}" text-anchor="end">{yv:.3g}</text>')
    for name, (colour, ps) in lines.items():
        steps = [ps[0]] + [q for a, b in zip(ps, ps[1:]) for q in ((b[0], a[1]), b)]  # across, then up
        xy = " ".join("{:.1f},{:.1f}".format(*px(x, y)) for x, y in steps)
        body.append(f'<polyline id="line-{escape(name)}" points="{xy}" fill="none" stroke="{colour}" '
                    f'stroke-width="1.5"><title>{escape(name)}</title></polyline>')
    for k, (name, (colour, ps)) in enumerate(list(series.items()) + list(lines.items())):
        if name in lines:
            y = top + 10 + 20 * k
            body.append(f'<line x1="{left + w + 14}" y1="{y}" x2="{left + w + 26}" y2="{y}" stroke="{colour}" '
                        f'stroke-width="1.5"/><text x="{left + w + 30}" y="{y + 4}">{escape(name)}</text>')
            continue
        for n, (x, y) in enumerate(ps):
            cx, cy = px(x, y)
            body.append(f'<circle id="point-{escape(name)}-{n}" cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="{colour}" '
                        f'fill-opacity="0.8" stroke="#333" stroke-width="0.5"><title>{escape(name)}: '
                        f'{x:.4g}, {y:.4g}</title></circle>')
        body.append(f'<circle cx="{left + w + 20}" cy="{top + 10 + 20 * k}" r="5" fill="{colour}"/>'
                    f'<text x="{left + w + 30}" y="{top + 14 + 20 * k}">{escape(name)}</text>')
    return _svg(left + w + 170, top + h + 50, body)


def grid_svg(pool, record, title):
    """NSE's layers x ops grid of one round (nse.py): a cell per op a layer held, filled by how it entered the
    round (inherited, new), crossed where simplification dropped it (its step in the title), outlined in red where
    aggregation kept it. Cell ids: cell-LAYER-OP."""
    ops = [op for op in pool if any(op in s for s in record["subsets"])]
    dropped = {(l, op): step for step, l, op in record["drops"]}
    left, top, cw, ch = 60, 150, 26, 20
    body = [f'<text x="{left}" y="22" font-size="13">{escape(title)}</text>']
    for c, op in enumerate(ops):
        x = left + c * cw + cw / 2
        body.append(f'<text x="{x}" y="{top - 6}" transform="rotate(-60 {x} {top - 6})">{escape(op)}</text>')
    for l, subset in enumerate(record["subsets"]):
        y = top + l * ch
        body.append(f'<text x="{left - 6}" y="{y + 14}" text-anchor="end">layer {l}</text>')
        for c, op in enumerate(ops):
            if op not in subset:
                continue
            x = left + c * cw
            inherited = op in record["inherited"][l]
            kept = op in record["kept"][l]
            state = ("inherited" if inherited else "new") + (f", dropped at step {dropped[l, op]}"
                                                             if (l, op) in dropped else "") + (", kept" if kept else "")
            body.append(f'<rect id="cell-{l}-{escape(op)}" x="{x + 1}" y="{y + 1}" width="{cw - 2}" height="{ch - 2}" '
                        f'fill="{"#9ecae1" if inherited else "#c7e9c0"}" stroke="{"#d62728" if kept else "#999"}" '
                        f'stroke-width="{2 if kept else 0.5}"><title>layer {l}, {escape(op)}: {state}</title></rect>')
            if (l, op) in dropped:
                body.append(f'<line x1="{x + 4}" y1="{y + 4}" x2="{x + cw - 4}" y2="{y + ch - 4}" stroke="#333"/>'
                            f'<line x1="{x + cw - 4}" y1="{y + 4}" x2="{x + 4}" y2="{y + ch - 4}" stroke="#333"/>')
    y = top + len(record["subsets"]) * ch + 20
    body.append(f'<text x="{left}" y="{y}">blue: inherited, green: new, crossed: dropped by its fitness, red '
                'outline: kept by aggregation</text>')
    return _svg(left + len(ops) * cw + 80, y + 20, body)


# ----------------------------------------------------------------------------------------
# The file a search's pictures are drawn from

def save_arch_params(space, alphas, p, path):
    """alpha and p of a search, with what rebuilds its space: what `--run` draws the super network from."""
    save_json_atomic({"space": space.name, "input_size": space.input_size, "in_channels": space.in_channels,
                      "num_classes": space.num_classes, "connect": space.connect,
                      "alphas": [[float(v) for v in a] for a in alphas], "p": [float(v) for v in p]}, path)


def load_arch_params(path):
    d = read_json(path, "arch params (search.py writes them after every epoch)")
    try:
        space = get_space(d["space"], d["input_size"], d["in_channels"], d["num_classes"], d["connect"])
        alphas, p = d["alphas"], d["p"]
    except (KeyError, TypeError):
        raise UsageError(f"{path} is not an arch_params.json written by search.py") from None
    if len(alphas) != len(space.slots) or len(p) != len(space.edges):
        raise UsageError(f"{path} does not match its space '{space.name}'")
    return space, alphas, p


def draw_search(folder, space, p, arch):
    """arch.svg (the derived network) and supernet.svg (p and the Viterbi path) of a search, into its folder."""
    save_text_atomic(arch_svg(arch), os.path.join(folder, "arch.svg"))
    save_text_atomic(supernet_svg(space, p, arch["path"]), os.path.join(folder, "supernet.svg"))


def draw_run(folder):
    """draw_search for a search folder, from its arch_params.json."""
    space, alphas, p = load_arch_params(os.path.join(folder, "arch_params.json"))
    arch = derive(space, alphas, p)
    draw_search(folder, space, p, arch)
    return arch


def main():
    ap = ArgumentParser(__doc__)
    ap.add_argument("--run", help="a search folder: derive from its arch_params.json, write arch.svg and supernet.svg")
    ap.add_argument("--arch", help="an arch file to summarise (and draw, with --svg)")
    ap.add_argument("--svg", help="with --arch: draw the architecture (Fig. 4 style) to this SVG file")
    ap.add_argument("--force", action="store_true", help="overwrite an existing --svg file")
    args = ap.parse_args()
    if bool(args.run) == bool(args.arch):
        raise UsageError("give one of --run FOLDER and --arch FILE")
    if args.svg:
        output_file(args.svg, "--svg", args.force)
    if args.run:
        if not os.path.isdir(args.run):
            raise UsageError(f"--run {args.run} is not a folder")
        arch = draw_run(args.run)
        print(f"wrote {os.path.join(args.run, 'arch.svg')} and {os.path.join(args.run, 'supernet.svg')}")
    else:
        arch = load_arch(args.arch)
    print(arch_text(arch))
    print(f"FLOPs {sum(op_flops(s) for s in arch_signatures(arch)) / 1e6:.1f}M")
    if args.svg:
        save_text_atomic(arch_svg(arch), args.svg)


if __name__ == "__main__":
    run_cli(main)
