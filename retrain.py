"""The derived network: build it from an arch file, profile it (supplement A.1, "retraining").

    python retrain.py --arch FILE --profile     params and FLOPs; the last line of stdout is JSON
"""
import argparse
import json

import torch
import torch.nn as nn

from cost import count_flops
from supernet import SPACES, count_params, init_weights, make_op, run_cli
from viterbi import arch_ops, arch_text, load_arch


class ArchNet(nn.Module):
    """The stand-alone network of an arch file: every operation of viterbi.arch_ops in order,
    with affine BN and He initialisation, then global average pooling and the classifier."""

    def __init__(self, arch):
        super().__init__()
        act = SPACES[arch["space"]].act  # stem and last conv: ReLU6 for mbv2 and toy, ReLU for resnet
        *body, (_, c_in, c_out, _, _) = arch_ops(arch)
        self.features = nn.Sequential(*(make_op(o, ci, co, s, affine=True, act=act) for o, ci, co, s, _ in body))
        self.classifier = nn.Linear(c_in, c_out)
        init_weights(self)

    def forward(self, x):
        x = self.features(x)
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def profile(arch):
    net = ArchNet(arch)
    return {"params": count_params(net.parameters()),
            "flops": count_flops(net, (arch["in_channels"], arch["input_size"], arch["input_size"]))}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", required=True, help="arch file (JSON) written by search.py or by hand")
    ap.add_argument("--profile", action="store_true", help="print params and FLOPs of the network")
    args = ap.parse_args()
    arch = load_arch(args.arch)
    if args.profile:
        print(arch_text(arch))
        print(json.dumps(profile(arch)))


if __name__ == "__main__":
    run_cli(main)
