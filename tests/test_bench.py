"""studies/bench.py: the active-compute reference computes what the super network computes, and the
benchmark's JSON line carries every figure. Timings are never asserted."""
import json

import torch
import torch.nn.functional as F

from studies import bench
from cost import space_signatures
from search import sample_candidates
from supernet import SuperNet, get_space


def toy_net(seed=0):
    """The toy super network with random alpha and beta, so every constant of the reference matters."""
    torch.manual_seed(seed)
    net = SuperNet(get_space("toy", 16, 3, 10))
    with torch.no_grad():
        for a in net.arch_parameters():
            a.normal_()
    return net.train()


def test_reference_is_the_sampled_sub_network():
    """Same logits, same weight gradients, and exactly the parameters of the modules the step ran;
    for two candidates per layer, the reference's constant gradients give the super network's
    alpha and beta gradients (chain rule through softmax, Eq. 2-3)."""
    net, g = toy_net(), torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 10, (4,), generator=g)
    for k in (1, 2):
        samples = sample_candidates(net, k, g)
        ref = bench.Reference(net, samples, grad=k == 2)
        ran = {id(p) for m in (net.stem, net.classifier) for p in m.parameters()}
        ran |= {id(p) for layer in net.layers for i in samples[layer.slot] for p in layer.ops[i].parameters()}
        assert {id(p) for p in ref.parameters()} == ran

        net.zero_grad(set_to_none=True)
        logits = net(x, samples)
        F.cross_entropy(logits, y).backward()
        got = {id(p): p.grad.clone() for p in net.parameters() if p.grad is not None}
        net.zero_grad(set_to_none=True)
        ref_logits = ref(x)
        F.cross_entropy(ref_logits, y).backward()
        assert torch.allclose(logits, ref_logits, atol=1e-5)
        for p in net.weight_parameters():
            assert (id(p) in got) == (id(p) in ran)
            if p.grad is not None:
                assert torch.allclose(p.grad, got[id(p)], atol=1e-5)
        if k == 2:
            p = net.path_probs()
            pairs = [(p[idx], rb.p) for idx, rb in zip(net._in_edges, ref.blocks)]
            for nb, rb in zip(net.blocks, ref.blocks):
                for la, mx in zip(list(nb.branches) + list(nb.layers), list(rb.branches) + list(rb.layers)):
                    if mx.weights:
                        pairs.append((F.softmax(la.alpha[samples[la.slot]], 0), mx.weights))
            chained = sum((expr * torch.stack([c.grad for c in leaves])).sum() for expr, leaves in pairs)
            want = torch.autograd.grad(chained, net.arch_parameters(), allow_unused=True)
            for a, w in zip(net.arch_parameters(), want):
                if w is not None:
                    assert torch.allclose(got[id(a)], w, atol=1e-6)
            assert all(c.grad is not None for c in ref.constants)


def test_bench_prints_every_figure(capsys):
    bench.main(["--space", "toy", "--input-size", "16", "--batch-size", "4", "--num-classes", "10",
                "--steps", "1", "--warmup", "0", "--mem-steps", "1"])
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["settings"]["space"] == "toy" and res["settings"]["threads"] == torch.get_num_threads()
    for step in ("weight", "arch"):
        for who in ("super", "reference"):
            f = res[f"{step}_{who}"]
            assert all(f[key] > 0 for key in ("img_s", "ms_median", "ms_mean", "peak_bytes"))
        r = res[f"{step}_ratio"]
        assert r["speedup"] > 0 and r["speedup_of_medians"] > 0 and r["memory"] > 0 and isinstance(r["met"], bool)
    assert isinstance(res["targets_met"], bool)
    assert res["full_supernet_peak_bytes"] > res["weight_super"]["peak_bytes"]  # every candidate holds more


def test_timed_reference_copy_computes_what_the_super_network_computes():
    """The reference that studies/bench.py times (Bench.ref_net: a contiguous copy with stock convolutions and
    in-place ReLU6) gives the super network's logits for the same sampled candidates."""
    b = bench.Bench(get_space("toy", 16, 3, 10), torch.device("cpu"), 4)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 3, 16, 16, generator=g)
    assert all(type(m) is torch.nn.Conv2d for m in b.ref_net.modules() if isinstance(m, torch.nn.Conv2d))
    for k in (1, 2):
        samples = sample_candidates(b.net, k, g)
        with torch.no_grad():
            want = b.net(x.contiguous(memory_format=torch.channels_last), samples)
            got = bench.Reference(b.ref_net, samples, grad=False)(x)
        assert torch.allclose(got, want, atol=1e-5)


def test_gpu_check_runs_every_part_at_toy_scale(capsys):
    """studies/bench.py --gpu-check, on the CPU at toy sizes: stdout is one JSON line with the benchmark against its
    reference, the latency table's build (every operation of the space), a search of at least --search-steps
    steps with that table, and the retraining step of an examples/ arch."""
    bench.main(["--gpu-check", "--device", "cpu", "--space", "toy", "--input-size", "16", "--batch-size", "16",
                "--steps", "1", "--warmup", "0", "--mem-steps", "1", "--search-steps", "40", "--retrain-batch", "2"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    res = json.loads(lines[0])
    assert res["input_size"] == 16 and res["batch_size"] == 16 and res["amp"] is False
    for step in ("weight", "arch"):
        assert res["bench"][step]["super_img_s"] > 0 and res["bench"][step]["reference_img_s"] > 0
    assert res["latency_table"]["ops"] == len(space_signatures(get_space("toy", 16, 3, 10)))
    assert res["search"]["steps"] >= 40 and res["search"]["arch_cost_ms"] > 0 and res["search"]["widths"]
    assert res["retrain"]["img_s"] > 0 and res["retrain"]["batch_size"] == 2
