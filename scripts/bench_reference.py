#!/usr/bin/env python3
"""Reference side of `mome bench train`: the same training step with PyTorch +
Hugging Face transformers on the same GPU, printing the same JSON fields.

  python3 scripts/bench_reference.py --config configs/bench/teacher-medium.toml [--compile] [--profile]

GPT2LMHeadModel (same shape, vocab 32000, 1024 positions, SDPA attention), bf16
autocast (fp32 master weights), fused AdamW, gradient clipping, random tokens;
`--compile` wraps the model(s) in torch.compile. Needs torch and transformers.

Modes (the config's `[bench] mode`, or `--mode`), as in `mome bench train`:
  lm         next-token CE step;
  kd-online  the teacher (`[bench] teacher`, default teacher-medium) in bf16, eval,
             no_grad, then the student step with alpha*CE + (1-alpha)*T^2*KL(p_t||q_s)
             (KL in fp32, mean over tokens; fixed alpha from `[bench] strategy`);
  kd-cache   the same student step against a top-K teacher read from host memory
             (synthetic ids int32 + log-probs fp16, [rows, T, K], copied to the GPU
             every step), with the same K+1-bucket forward KL as mome-distill.
  moe-jeet   the JEET step of `mome moe train` (method section 6): one shared token +
             position embedding and one shared LM head (separate Linear(d -> V) unless
             [model] tie_word_embeddings = true), one stack of transformers GPT2Block
             + its own final LayerNorm per domain expert (`[bench] domains`, default
             en fr de py; the shape of [model]), fed the shared embeddings. Each
             micro-batch holds one domain, round-robin (the blocks sampler), routed
             by label: sequences are grouped by expert, each expert runs once on its
             group, the outputs are averaged per sequence (fp32), then the head and
             next-token CE. Only the routed domain experts of the step train, the
             others get requires_grad_(False) (no grad: fused AdamW and clipping skip
             them); embedding and head train every step.
  moe-ce     the same with the common expert (same shape), trained on every batch;
             the hidden state is the mean of the routed and the common expert.
             With --compile, each expert stack, the embedding and the head + loss
             are compiled separately (the grouping by label stays eager).
`--profile` runs 3 more steps under torch.profiler and prints its top-15 CUDA
kernel table to stderr; the JSON gets the same rows as "profile_top_kernels".
"""
import argparse, json, math, sys, time, tomllib

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.models.gpt2.modeling_gpt2 import GPT2Block

PRESETS = {
    "teacher-medium": dict(n_layer=24, n_embd=1024, n_head=16),
    "student-6l": dict(n_layer=6, n_embd=768, n_head=12),
    "student-3l": dict(n_layer=3, n_embd=768, n_head=6),
    "custom": dict(n_layer=3, n_embd=768, n_head=6),
}
H100_BF16_DENSE_PEAK = 989.4e12
REST_FLOOR = 1e-12


def hf_config(table, vocab):
    m = dict(table)
    shape = dict(PRESETS[m.pop("preset", "student-3l")])
    shape.update({k: v for k, v in m.items() if k in ("n_layer", "n_embd", "n_head", "n_positions")})
    n_pos = shape.pop("n_positions", 1024)
    extra = {k: m.get(k, 0.1) for k in ("resid_pdrop", "embd_pdrop", "attn_pdrop")}
    extra["tie_word_embeddings"] = bool(m.get("tie_word_embeddings", True))
    hf = GPT2Config(vocab_size=vocab, n_positions=n_pos, layer_norm_epsilon=1e-5,
                    bos_token_id=1, eos_token_id=2, **extra, **shape)
    hf._attn_implementation = "sdpa"
    return hf


def flops_per_token(model, hf, seq, vocab):
    n_total = sum(p.numel() for p in model.parameters())
    n_emb = model.transformer.wte.weight.numel() + model.transformer.wpe.weight.numel()
    return 6 * (n_total - n_emb + vocab * hf.n_embd) + 12 * hf.n_layer * seq * hf.n_embd


class ExpertStack(torch.nn.Module):
    """One MoE expert: GPT2Blocks + its final LayerNorm, fed the shared embeddings."""

    def __init__(self, hf):
        super().__init__()
        self.h = torch.nn.ModuleList([GPT2Block(hf, layer_idx=i) for i in range(hf.n_layer)])
        self.ln_f = torch.nn.LayerNorm(hf.n_embd, eps=hf.layer_norm_epsilon)

    def forward(self, x):
        for block in self.h:
            x = block(x)  # no mask: SDPA with is_causal
            if isinstance(x, tuple):  # transformers < 5 returns a tuple
                x = x[0]
        return self.ln_f(x)


class MoeModel(torch.nn.Module):
    """mome-moe's JEET / MoE-CE model: shared wte/wpe (+ dropout), one ExpertStack per
    domain (+ common), shared LM head (separate unless tied); the hidden state of a
    sequence is the mean of its active experts' outputs (fp32), then the head."""

    def __init__(self, hf, domains, common, compile_parts=False):
        super().__init__()
        V, d = hf.vocab_size, hf.n_embd
        self.wte = torch.nn.Embedding(V, d)
        self.wpe = torch.nn.Embedding(hf.n_positions, d)
        self.drop = torch.nn.Dropout(hf.embd_pdrop)
        self.experts = torch.nn.ModuleList([ExpertStack(hf) for _ in domains])
        self.common = ExpertStack(hf) if common else None
        self.lm_head = torch.nn.Linear(d, V, bias=False)
        for mod in self.modules():
            if isinstance(mod, (torch.nn.Linear, torch.nn.Embedding)):
                torch.nn.init.normal_(mod.weight, std=hf.initializer_range)
        if hf.tie_word_embeddings:
            self.lm_head.weight = self.wte.weight
        self.V = V
        c = torch.compile if compile_parts else (lambda f: f)
        self.run_expert = [c(e) for e in self.experts]
        self.run_common = c(self.common) if common else None
        self.run_embed = c(self._embed)
        self.run_head_loss = c(self._head_loss)

    def _embed(self, ids):
        pos = torch.arange(ids.shape[1], device=ids.device)
        return self.drop(self.wte(ids) + self.wpe(pos))

    def _head_loss(self, h_sum, inv, ids):
        logits = self.lm_head(h_sum * inv)
        # next-token CE as transformers' ForCausalLMLoss: fp32 logits, shifted labels
        # padded with -100 (mean over the B*(T-1) real targets)
        labels = F.pad(ids[:, 1:], (0, 1), value=-100)
        return F.cross_entropy(logits.float().view(-1, self.V), labels.reshape(-1), ignore_index=-100)

    def stack_parameters(self):
        return sum(p.numel() for p in self.experts[0].parameters())

    def forward_loss(self, ids, labels):
        """`labels`: the routed domain expert of each row (host list)."""
        B = ids.shape[0]
        x = self.run_embed(ids)
        groups = {}
        for i, l in enumerate(labels):
            groups.setdefault(l, []).append(i)
        runs = [(self.run_expert[l], rows) for l, rows in sorted(groups.items())]
        if self.run_common is not None:
            runs.append((self.run_common, list(range(B))))
        h_sum = None
        for run, rows in runs:
            if len(rows) == B:
                out = run(x).float()
            else:
                idx = torch.tensor(rows, device=ids.device)
                out = torch.zeros(x.shape, dtype=torch.float32, device=ids.device).index_add(
                    0, idx, run(x.index_select(0, idx)).float())
            h_sum = out if h_sum is None else h_sum + out
        # every row has the same number of active experts here (routed + common)
        inv = 1.0 / (1 + (self.run_common is not None))
        return self.run_head_loss(h_sum, inv, ids)


def kd_dense(s_logits, t_logits, T):
    s = F.log_softmax(s_logits.float() / T, dim=-1)
    t = F.log_softmax(t_logits.float() / T, dim=-1)
    per = F.kl_div(s, t, log_target=True, reduction="none").sum(-1)
    return per.mean() * T * T


def kd_topk(s_logits, ids, logp, T):
    s = F.log_softmax(s_logits.float() / T, dim=-1)
    s_k = s.gather(-1, ids)
    lse = torch.logsumexp(s_k, -1, keepdim=True).clamp_max(math.log1p(-REST_FLOOR))
    s_rest = torch.log((-torch.expm1(lse)).clamp_min(REST_FLOOR))
    t_k = logp.float()
    t_rest = torch.log((1 - t_k.exp().sum(-1, keepdim=True)).clamp_min(0))
    s_all, t_all = torch.cat([s_k, s_rest], -1), torch.cat([t_k, t_rest], -1)
    p = t_all.exp()
    pos = p > 0
    per = (p * (torch.where(pos, t_all, 0) - torch.where(pos, s_all, 0))).sum(-1)
    return per.mean() * T * T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--mode", choices=["lm", "kd-online", "kd-cache", "moe-jeet", "moe-ce"])
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--vocab-size", type=int, default=32000)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--peak-flops", type=float, default=H100_BF16_DENSE_PEAK)
    ap.add_argument("--device", default="cuda", help="cuda (default); cpu only for a smoke test (fp32)")
    a = ap.parse_args()
    cfg = tomllib.load(open(a.config, "rb"))
    bench = cfg.get("bench", {})
    mode = a.mode or bench.get("mode", "lm")
    V = a.vocab_size
    hf = hf_config(cfg["model"], V)
    n_pos = hf.n_positions
    train = cfg["train"]
    opt_cfg = train.get("optimizer", {})
    bf16 = train.get("precision", "fp32") == "bf16"
    torch.manual_seed(train.get("seed", 0))
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    bf16 = bf16 and cuda
    torch.backends.cuda.matmul.allow_tf32 = False
    moe = mode in ("moe-jeet", "moe-ce")
    domains = list(bench.get("domains", ["en", "fr", "de", "py"]))
    if moe:
        model = MoeModel(hf, domains, mode == "moe-ce", compile_parts=a.compile).to(dev).train()
    else:
        model = GPT2LMHeadModel._from_config(hf, attn_implementation="sdpa").to(dev).train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "wte" not in n and "wpe" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "wte" not in n and "wpe" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": opt_cfg.get("weight_decay", 0.0)},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=opt_cfg.get("lr", 1e-3), betas=tuple(opt_cfg.get("betas", (0.9, 0.999))),
        eps=opt_cfg.get("eps", 1e-8), fused=cuda)
    fwd = torch.compile(model) if a.compile and not moe else model
    b = a.batch_size or cfg["data"]["batch_size"]
    accum = train.get("grad_accum", 1)
    clip = train.get("clip_grad_norm")
    batches = [torch.randint(0, V, (b, n_pos), device=dev) for _ in range(accum)]
    distill = cfg.get("distill", {})  # the KD settings, as `mome distill`'s [distill]
    T = float(distill.get("temperature", 2.0))
    strat = distill.get("strategy", {"kind": "fixed", "alpha": 0.5})
    alpha = float(strat.get("alpha", 0.5))
    if moe:
        # only what runs forward + backward: A active stacks (1 JEET, 2 MoE-CE) + the head
        A = 1 + (mode == "moe-ce")
        fpt = 6 * (A * model.stack_parameters() + V * hf.n_embd) + 12 * A * hf.n_layer * n_pos * hf.n_embd
    else:
        fpt = flops_per_token(model, hf, n_pos, V)
    teacher = tfwd = None
    teacher_params = None
    if mode == "kd-online":
        thf = hf_config(bench.get("teacher", {"preset": "teacher-medium"}), V)
        teacher = GPT2LMHeadModel._from_config(thf, attn_implementation="sdpa").to(dev)
        teacher = teacher.to(torch.bfloat16 if cuda else torch.float32).eval().requires_grad_(False)
        tfwd = torch.compile(teacher) if a.compile else teacher
        fpt += flops_per_token(teacher, thf, n_pos, V) / 3
        teacher_params = sum(p.numel() for p in teacher.parameters())
    cache = None
    if mode == "kd-cache":
        K, rows = int(bench.get("top_k", 64)), int(bench.get("cache_rows", 64))
        u = torch.rand(rows, n_pos, K) + 1e-3
        u = u.sort(-1, descending=True).values
        cache = (torch.randint(0, V, (rows, n_pos, K), dtype=torch.int32),
                 (u / u.sum(-1, keepdim=True) * 0.9).log().half())
    cursor = [0]
    micro = [0]

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def moe_step():
        total = torch.zeros((), device=dev)
        this_step = set()
        for ids in batches:
            d = micro[0] % len(domains)  # blocks sampler: one domain per micro-batch, round-robin
            micro[0] += 1
            this_step.add(d)
            for i, e in enumerate(model.experts):
                e.requires_grad_(i in this_step)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                loss = model.forward_loss(ids, [d] * ids.shape[0])
            loss = loss / accum
            loss.backward()
            total += loss.detach()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return total

    def step():
        if moe:
            return moe_step()
        total = torch.zeros((), device=dev)
        for ids in batches:
            t_logits = sp = None
            if teacher is not None:
                with torch.no_grad():
                    t_logits = tfwd(input_ids=ids).logits
            if cache is not None:
                idx = torch.arange(cursor[0], cursor[0] + b) % cache[0].shape[0]
                cursor[0] = (cursor[0] + b) % cache[0].shape[0]
                sp = (cache[0][idx].to(dev).long(), cache[1][idx].to(dev))
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                out = fwd(input_ids=ids, labels=ids)
            loss = out.loss
            if t_logits is not None:
                loss = alpha * loss + (1 - alpha) * kd_dense(out.logits, t_logits, T)
            elif sp is not None:
                loss = alpha * loss + (1 - alpha) * kd_topk(out.logits, sp[0], sp[1], T)
            loss = loss / accum
            loss.backward()
            total += loss.detach()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return total

    for _ in range(a.warmup):
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        last = step()
    sync()
    secs = time.perf_counter() - t0
    tps = b * accum * n_pos * a.steps / secs
    impl = "pytorch-compile" if a.compile else "pytorch-eager"
    report = {
        "implementation": impl, "config": a.config, "mode": mode,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "precision": "bf16" if bf16 else "fp32",
        "parameters": sum(p.numel() for p in model.parameters()),
        "teacher_parameters": teacher_params,
        "batch": b * accum, "seq_len": n_pos, "vocab_size": V, "steps": a.steps,
        "step_seconds": secs / a.steps, "tokens_per_second": tps,
        "flops_per_token": fpt, "mfu": tps * fpt / a.peak_flops,
        "peak_flops": a.peak_flops,
        "peak_gpu_memory_mib": torch.cuda.max_memory_reserved() // 2**20 if cuda else None,
        "final_loss": float(last),
        "torch": torch.__version__,
    }
    if moe:
        report["moe"] = {"arch": "jeet" if mode == "moe-jeet" else "moe-ce", "domains": domains,
                         "common_expert": mode == "moe-ce", "active_stacks": A,
                         "stack_parameters": model.stack_parameters(),
                         "tie_word_embeddings": hf.tie_word_embeddings}
    if a.profile:
        from torch.profiler import profile, ProfilerActivity
        n = 3
        with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
            for _ in range(n):
                step()
            sync()
        ka = prof.key_averages()
        def dev_self(e):
            if not cuda:
                return e.self_cpu_time_total
            return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
        table = None
        for sort_key in (["self_device_time_total", "self_cuda_time_total"] if cuda else ["self_cpu_time_total"]):
            try:
                table = ka.table(sort_by=sort_key, row_limit=15)
                break
            except Exception:
                continue
        print(f"== torch.profiler {impl} {a.config} ({mode}), {n} steps, sorted by {sort_key}",
              file=sys.stderr)
        print(table, file=sys.stderr)
        rows = sorted(ka, key=dev_self, reverse=True)
        total_us = sum(dev_self(e) for e in ka) or 1.0
        report["profile_top_kernels"] = [
            {"name": e.key[:120], "ms_per_step": dev_self(e) / 1e3 / n,
             "pct": 100.0 * dev_self(e) / total_us, "calls_per_step": e.count / n}
            for e in rows[:15]]
        report["profile_device_ms_per_step"] = total_us / 1e3 / n
    print(json.dumps(report))


if __name__ == "__main__":
    main()
