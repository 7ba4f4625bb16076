"""Run by a vLLM interpreter (not the router's): parse each argv on stdin with ``vllm serve``'s own
argument parser and print what vLLM would run with, so compose's flags are checked by the CLI of the
vLLM version they are written for. Input: a JSON list of argv lists; output: a JSON list of dicts."""

import json
import sys

import vllm.entrypoints.cli.serve as serve
from vllm.utils.argparse_utils import FlexibleArgumentParser

parser = FlexibleArgumentParser(prog="vllm")
subparsers = parser.add_subparsers(dest="subparser")
for command in serve.cmd_init():
    command.subparser_init(subparsers)
out = []
for argv in json.load(sys.stdin):
    args = parser.parse_args(["serve", *argv])
    out.append(
        {
            "model": getattr(args, "model_tag", None) or args.model,
            "max_model_len": args.max_model_len,
            "max_num_seqs": args.max_num_seqs,
            "port": args.port,
            "served_model_name": args.served_model_name,
            "dtype": args.dtype,
            "enforce_eager": args.enforce_eager,
        }
    )
print(json.dumps(out))
