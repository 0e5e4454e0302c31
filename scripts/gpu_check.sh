#!/usr/bin/env bash
# GPU checks of the PyTorch backends, for a machine with an NVIDIA GPU:
#   1. the cuda tests (probe, static KV cache, conformance kit incl. CUDA graphs),
#   2. decode speed of a SmolLM2-135M-shaped Llama (random weights: speed does not depend
#      on their values, and no model file is needed): cuda fp16 variants vs cpu fp32, with
#      transformers `generate` fp16 on the same GPU as the peer, all in one process.
# Usage, from anywhere:  bash scripts/gpu_check.sh
# Uses $PYTHON if set, else python3 if its torch sees a GPU (offline machines), else makes
# a venv with torch==2.13.0 from PyPI (on Linux x86_64 that wheel is the CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-/tmp/plugstack-gpu-venv}
PY=${PYTHON:-}
if [ -z "$PY" ] && python3 -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
  python3 -m venv --system-site-packages "$VENV"            # reuse the machine's CUDA torch
  "$VENV/bin/pip" install -q --no-deps --no-build-isolation -e . || true
  PY=$VENV/bin/python
elif [ -z "$PY" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "torch==2.13.0"
  "$VENV/bin/pip" install -q -e ".[test]"
  PY=$VENV/bin/python
fi
nvidia-smi --query-gpu=name,memory.total,compute_cap,driver_version --format=csv || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available())"
"$PY" -m pytest -q -p no:cacheprovider tests/backends -k "cuda" -rs
"$PY" - <<'PYEOF'
import copy, time, torch
from plugstack.backends.cpu.backend import CpuBackend
from plugstack.backends.cuda.backend import CudaBackend
from plugstack.backends.cuda.config import CudaBackendConfig
from plugstack.model import Model
from plugstack.plugins.llama.model import Llama, LlamaConfig, init_weights
from plugstack.testing import DecoderDriver

cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9,
                  num_kv_heads=3, rope_theta=100000.0, context_length=8192)
module = init_weights(Llama(cfg), seed=0).eval()
model = Model("smollm2-shaped", "decoder", module, module.signature(), module.example_inputs, context_length=8192)
prompt, n = [[(i * 37) % 49152 for i in range(38)]], 128

def decode_tps(runner):
    for steps in (8, n):  # warm-up (and graph capture), then the timed run
        d = DecoderDriver(runner, 1); tok = d.feed(prompt).argmax(-1)
        if torch.cuda.is_available(): torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps - 1): tok = d.feed(tok).argmax(-1)
        dt = time.perf_counter() - t0
    runner.close()
    return (n - 1) / dt

rows = {"cpu fp32 (eager)": decode_tps(CpuBackend().prepare(model))}
for label, kw in [("cuda fp16 eager, growing cache", dict(static_cache=False)),
                  ("cuda fp16 static cache", dict(max_cache_len=512)),
                  ("cuda fp16 static cache + graphs", dict(max_cache_len=512, cuda_graphs=True))]:
    rows[label] = decode_tps(CudaBackend(CudaBackendConfig(dtype="fp16", **kw)).prepare(model))
from transformers import LlamaConfig as HFConfig, LlamaForCausalLM
hf = LlamaForCausalLM(HFConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                               num_attention_heads=9, num_key_value_heads=3, rope_theta=100000.0,
                               tie_word_embeddings=True)).to("cuda", torch.float16).eval()
ids = torch.tensor(prompt, device="cuda"); kw = dict(do_sample=False, attention_mask=torch.ones_like(ids))
with torch.inference_mode():
    hf.generate(ids, max_new_tokens=8, min_new_tokens=8, **kw); torch.cuda.synchronize()
    t0 = time.perf_counter(); hf.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw); torch.cuda.synchronize()
    pre = time.perf_counter() - t0
    t0 = time.perf_counter(); hf.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw); torch.cuda.synchronize()
    rows["transformers generate fp16 (peer)"] = (n - 1) / (time.perf_counter() - t0 - pre)
peer = rows["transformers generate fp16 (peer)"]
print(f"decode tok/s, batch 1, 38-token prompt, {n} greedy tokens, {torch.cuda.get_device_name()}")
for k, v in rows.items():
    print(f"  {k:36s} {v:8.1f} tok/s  {v / peer:5.2f}x transformers")
PYEOF
