#!/usr/bin/env python3
"""GPT-2 parity fixture for crates/mome-experts, made with Hugging Face transformers.

Usage:
    python3 scripts/make_gpt2_fixture.py                  # (re)write the fixture
    python3 scripts/make_gpt2_fixture.py --check-load DIR # load a Rust-saved model

The script re-executes itself inside a private virtual environment
(/tmp/mome-fixture-venv, override with MOME_FIXTURE_VENV) holding
transformers==4.57.6, numpy and safetensors. torch is not installed there: the
torch 2.11.0 that scripts/setup-libtorch.sh put in $MOME_CACHE/torch-2.11.0
(default ~/.cache/mome/torch-2.11.0) is put on PYTHONPATH. If it is absent, the
CPU build of torch 2.11.0 is pip-installed into the venv instead.

Default mode: builds a seeded tiny random GPT2LMHeadModel (vocab 64, 32 positions,
n_embd 32, 2 layers, 4 heads), calls save_pretrained into
crates/mome-experts/tests/fixtures/tiny-gpt2/ (config.json + model.safetensors) and
writes expected.safetensors there: the inputs (2 sequences, the second left-padded)
and eval-mode outputs (logits and last hidden states, with and without the mask,
and with explicit position ids).

--check-load DIR: loads DIR (config.json + model.safetensors written by the Rust
save_pretrained) with GPT2LMHeadModel.from_pretrained, runs the inputs stored in
DIR/expected.safetensors (`input_ids`, `attention_mask`) and prints the max
|logits - expected logits| over real (unmasked) positions.
"""

import os
import sys
from pathlib import Path

from fixture_venv import inside, log, reexec_in_venv

TRANSFORMERS_VERSION = "4.57.6"
TORCH_VERSION = "2.11.0"
REPO = Path(__file__).resolve().parent.parent
FIXTURE_DIR = REPO / "crates" / "mome-experts" / "tests" / "fixtures" / "tiny-gpt2"
VENV = Path(os.environ.get("MOME_FIXTURE_VENV", "/tmp/mome-fixture-venv"))


def torch_cache_dir():
    cache = os.environ.get("MOME_CACHE")
    if not cache:
        xdg = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
        cache = str(Path(xdg) / "mome")
    d = Path(cache) / f"torch-{TORCH_VERSION}"
    if (d / "torch" / "__init__.py").is_file():
        return d
    d = Path.home() / ".cache" / "mome" / f"torch-{TORCH_VERSION}"
    if (d / "torch" / "__init__.py").is_file():
        return d
    return None


def bootstrap():
    """Re-run this script inside the venv, with the cached torch on PYTHONPATH."""
    if inside(VENV):
        return
    torch_dir = torch_cache_dir()
    env, extra = {}, []
    if torch_dir is not None:
        log(f"using torch from {torch_dir}")
        env["PYTHONPATH"] = str(torch_dir) + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
    else:
        log(f"no cached torch found; torch=={TORCH_VERSION} (CPU) goes into the venv")
        extra.append(["--index-url", "https://download.pytorch.org/whl/cpu", f"torch=={TORCH_VERSION}"])
    reexec_in_venv(VENV, [f"transformers=={TRANSFORMERS_VERSION}", "numpy", "safetensors"], extra_installs=extra, env=env)


def tiny_config():
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=64,
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_inner=None,
        activation_function="gelu_new",
        resid_pdrop=0.1,
        embd_pdrop=0.1,
        attn_pdrop=0.1,
        layer_norm_epsilon=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=True,
    )


def fixture_inputs(torch):
    g = torch.Generator().manual_seed(1234)
    ids = torch.randint(3, 64, (2, 8), generator=g, dtype=torch.int64)
    mask = torch.ones(2, 8, dtype=torch.int64)
    # second sequence: 3 left pad tokens (id 2 = eos used as pad, as the tokenizer does)
    mask[1, :3] = 0
    ids[1, :3] = 2
    return ids, mask


def run_model(torch, model, ids, mask=None, position_ids=None):
    with torch.no_grad():
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids,
            output_hidden_states=True,
            use_cache=False,
        )
    return out.logits.float().contiguous(), out.hidden_states[-1].float().contiguous()


def make_fixture():
    import torch
    from safetensors.torch import save_file
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(tiny_config())
    # GPT-2 init (std 0.02) gives near-uniform logits, a weak parity test: spread the
    # weights so that logits and hidden states have O(1) magnitudes.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln_" in name or name.startswith("transformer.ln_f"):
                if name.endswith("weight"):
                    p.copy_(1.0 + 0.2 * torch.randn_like(p))
                else:
                    p.copy_(0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
            else:
                p.copy_(0.25 * torch.randn_like(p))
    model.eval()
    FIXTURE_DIR.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(FIXTURE_DIR), safe_serialization=True)

    ids, mask = fixture_inputs(torch)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits_nomask, hidden_nomask = run_model(torch, model, ids)
    logits_mask, hidden_mask = run_model(torch, model, ids, mask)
    logits_pos, hidden_pos = run_model(torch, model, ids, mask, positions)
    with torch.no_grad():
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states
    tensors = {
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": positions,
        "logits_nomask": logits_nomask,
        "last_hidden_nomask": hidden_nomask,
        "logits_mask": logits_mask,
        "last_hidden_mask": hidden_mask,
        "logits_mask_pos": logits_pos,
        "last_hidden_mask_pos": hidden_pos,
        # hidden state after the first block (HF convention: index 0 = embeddings)
        "hidden_1_nomask": hs[1].float().contiguous(),
    }
    save_file(tensors, str(FIXTURE_DIR / "expected.safetensors"))
    total = sum(f.stat().st_size for f in FIXTURE_DIR.iterdir())
    import transformers

    log(f"wrote {FIXTURE_DIR} ({total} bytes) with transformers {transformers.__version__}, torch {torch.__version__}")


def check_load(d):
    import torch
    from safetensors.torch import load_file
    from transformers import GPT2LMHeadModel

    d = Path(d)
    model = GPT2LMHeadModel.from_pretrained(str(d))
    model.eval()
    exp = load_file(str(d / "expected.safetensors"))
    ids = exp["input_ids"].long()
    mask = exp["attention_mask"].long()
    logits, _ = run_model(torch, model, ids, mask)
    keep = mask.bool()
    diff = (logits - exp["logits"].float()).abs()[keep].max().item()
    sd = model.state_dict()
    print(f"loaded {d}: tie_word_embeddings={model.config.tie_word_embeddings} "
          f"lm_head tied={sd['lm_head.weight'].data_ptr() == sd['transformer.wte.weight'].data_ptr()}")
    print(f"max |logits diff| = {diff:.3e}")
    if not diff < 1e-4:
        sys.exit(1)


def main():
    bootstrap()
    args = sys.argv[1:]
    if args and args[0] == "--check-load":
        if len(args) != 2:
            sys.exit("usage: make_gpt2_fixture.py --check-load DIR")
        check_load(args[1])
    elif not args:
        make_fixture()
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
