"""cuBLAS SGEMM GFLOP/s by size through PyTorch (TF32 off), the reference the OpenCL GEMM is
compared with on a GPU. Prints a Markdown table; with --json FILE, one JSON object per size.

python3 scripts/bench/cublas_sgemm.py --sizes 256,512,1024,2048,4096 --rounds 5
"""

import argparse
import json
import statistics

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="256,512,1024,2048,4096")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        a = torch.rand(n, n, device=device) * 2 - 1
        b = torch.rand(n, n, device=device) * 2 - 1
        for _ in range(3):
            torch.mm(a, b)
        torch.cuda.synchronize()
        figures = []
        for _ in range(args.rounds):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            torch.mm(a, b)
            end.record()
            torch.cuda.synchronize()
            seconds = start.elapsed_time(end) / 1e3
            figures.append(2 * n**3 / seconds / 1e9)
        rows.append(
            {
                "engine": "cuBLAS (PyTorch, TF32 off)",
                "device": name,
                "n": n,
                "gflops_median": round(statistics.median(figures), 2),
                "gflops_worst": round(min(figures), 2),
                "rounds": args.rounds,
            }
        )
    print("| engine | device | n | GFLOP/s median | worst |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['engine']} | {r['device']} | {r['n']} | {r['gflops_median']:.1f} | {r['gflops_worst']:.1f} |")
    if args.json:
        with open(args.json, "w") as out:
            for r in rows:
                out.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
