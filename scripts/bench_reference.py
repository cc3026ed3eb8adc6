#!/usr/bin/env python3
"""Reference side of `mome bench train`: the same training step with PyTorch +
Hugging Face transformers on the same GPU, printing the same JSON fields.

  python3 scripts/bench_reference.py --config configs/bench/teacher-medium.toml [--compile]

GPT2LMHeadModel (same shape, vocab 32000, 1024 positions, SDPA attention), bf16
autocast (fp32 master weights), fused AdamW, gradient clipping, random tokens;
`--compile` wraps the model in torch.compile. Needs torch and transformers.
"""
import argparse, json, subprocess, os, time, tomllib

import torch
from transformers import GPT2Config, GPT2LMHeadModel

PRESETS = {
    "teacher-medium": dict(n_layer=24, n_embd=1024, n_head=16),
    "student-6l": dict(n_layer=6, n_embd=768, n_head=12),
    "student-3l": dict(n_layer=3, n_embd=768, n_head=6),
}
H100_BF16_DENSE_PEAK = 989.4e12


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--vocab-size", type=int, default=32000)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--peak-flops", type=float, default=H100_BF16_DENSE_PEAK)
    a = ap.parse_args()
    cfg = tomllib.load(open(a.config, "rb"))
    m = dict(cfg["model"])
    shape = dict(PRESETS[m.pop("preset", "student-3l")])
    shape.update({k: v for k, v in m.items() if k in ("n_layer", "n_embd", "n_head", "n_positions")})
    n_pos = shape.pop("n_positions", 1024)
    hf = GPT2Config(vocab_size=a.vocab_size, n_positions=n_pos, resid_pdrop=0.1,
                    embd_pdrop=0.1, attn_pdrop=0.1, layer_norm_epsilon=1e-5,
                    bos_token_id=1, eos_token_id=2, **shape)
    train = cfg["train"]
    opt_cfg = train.get("optimizer", {})
    bf16 = train.get("precision", "fp32") == "bf16"
    torch.manual_seed(train.get("seed", 0))
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    model = GPT2LMHeadModel._from_config(hf, attn_implementation="sdpa").to(dev).train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "wte" not in n and "wpe" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "wte" not in n and "wpe" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": opt_cfg.get("weight_decay", 0.0)},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=opt_cfg.get("lr", 1e-3), betas=tuple(opt_cfg.get("betas", (0.9, 0.999))),
        eps=opt_cfg.get("eps", 1e-8), fused=True)
    fwd = torch.compile(model) if a.compile else model
    b = cfg["data"]["batch_size"]
    accum = train.get("grad_accum", 1)
    clip = train.get("clip_grad_norm")
    batches = [torch.randint(0, a.vocab_size, (b, n_pos), device=dev) for _ in range(accum)]

    def step():
        total = torch.zeros((), device=dev)
        for ids in batches:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                out = fwd(input_ids=ids, labels=ids)
            loss = out.loss / accum
            loss.backward()
            total += loss.detach()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return total

    for _ in range(a.warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        last = step()
    torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    n_total = sum(p.numel() for p in model.parameters())
    n_emb = model.transformer.wte.weight.numel() + model.transformer.wpe.weight.numel()
    L, d = hf.n_layer, hf.n_embd
    flops_per_token = 6 * (n_total - n_emb + a.vocab_size * d) + 12 * L * n_pos * d
    tps = b * accum * n_pos * a.steps / secs
    print(json.dumps({
        "implementation": "pytorch-compile" if a.compile else "pytorch-eager",
        "config": a.config, "device": torch.cuda.get_device_name(0),
        "precision": "bf16" if bf16 else "fp32", "parameters": n_total,
        "batch": b * accum, "seq_len": n_pos, "steps": a.steps,
        "step_seconds": secs / a.steps, "tokens_per_second": tps,
        "flops_per_token": flops_per_token, "mfu": tps * flops_per_token / a.peak_flops,
        "peak_flops": a.peak_flops,
        "peak_gpu_memory_mib": torch.cuda.max_memory_reserved() // 2**20,
        "final_loss": float(last),
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
